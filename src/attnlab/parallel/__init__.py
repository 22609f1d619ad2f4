"""Context parallelism: attention over a sequence sharded along its tokens across ``torch.distributed`` ranks.

Each rank holds ``t / N`` tokens of every sequence (:func:`shard` cuts them, :func:`unshard` gathers them
back; with ``load_balance`` rank ``r`` holds chunks ``r`` and ``2N - 1 - r`` of ``2N``, so causal work is even).
:func:`context_parallel_attention` attends the local queries over the whole sequence with one of:

- ``"ring"``: key/value shards travel around the ring; partial results merge on the log-sum-exp
  (:mod:`.ring`, :mod:`.merge`, :mod:`.blocks`);
- ``"all_gather"``: keys and values gathered once, each query chunk attends to the keys it can see
  (:mod:`.all_gather`);
- ``"ulysses"``: all-to-all from sequence shards to head shards and back (:mod:`.ulysses`).

Run ``torch.distributed.init_process_group`` on every rank first; see docs/parallel.md.
"""

from .api import STRATEGIES, context_parallel_attention
from .layout import SequenceLayout
from .sharding import shard, unshard

__all__ = ["STRATEGIES", "SequenceLayout", "context_parallel_attention", "shard", "unshard"]
