"""The pruners: ``finegrained`` (per-weight and N:M masks), ``channel`` (physically smaller models
through coupled channel groups), ``reconstruct`` (least-squares refit after channel pruning),
``schedule`` (iterative AGP pruning) and ``oneshot`` (a data-free channel pruner to a budget)."""
