"""Annealing spread over Ray (the optional extra ``ray``): a connection per run (``cluster``) and the
schedule's tuning folds on Ray workers (``folds``). Nothing here imports Ray unless a run asks for it."""
