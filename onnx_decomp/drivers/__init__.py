"""Drivers: the runs a user asks for, composed from the layers below (context, planning, rewrite, runtime)."""
