"""Work spread over Ray (the optional extra ``ray``): a connection per run (``cluster``), the annealing schedule's
tuning folds on Ray workers (``folds``), and a chain's independent sub-networks as shard models (``shards``) run
in one process or as Ray actors (``inference``). Nothing here imports Ray unless a run asks for it."""
