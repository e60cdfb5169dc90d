"""Annealing and inference spread over Ray (the optional extra ``ray``): a connection per run (``cluster``),
the schedule's tuning folds on Ray workers (``folds``), and shard models run as Ray actors (``shards``).
Nothing here is imported unless a run asks for Ray."""
