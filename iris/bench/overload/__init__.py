"""`iris bench overload`: twice the capacity offered in two priorities, and what priority preemption
keeps for the high one.

The stack is real (nats-server, broker, one 2-slot worker as processes; `max_concurrency = 2` as in the
seed). Requests are labelled as the reference labels them: a workload per tier with its priority, five
users per tier (`paid` priority 5: "high"; `open-source` priority 1: "low"). Capacity (requests/s) is
measured first, closed loop, on a stack of its own; arrivals are then open loop (Poisson) at `--load`
× that capacity, `--high-share` of it high and the rest low. Three phases, each on a fresh stack so no
queue, flow state or suspension carries over, with the same high arrival times in all three and the same
low ones in both loaded phases:
  * `unloaded` — the high arrivals alone: what high's queue wait is without the low load;
  * `off`      — high and low, preemption off (`preempt_ratio = 0`, the default);
  * `on`       — high and low, preemption on (`--preempt-ratio`, `--preempt-min-run`, ...).
Queue wait is the `Result`'s `timings.queued_ms` (the request stored in the stream → its worker started
it; a suspension later is not in it); the client's time to first chunk is reported beside it. Every
request has `--deadline` (the reference's queue timeout): the low queue stays bounded, its excess is
refused at once (`deadline_unmeetable`) or expires (`deadline_exceeded`), and both are counted. Reported
per phase and tier: p50/p99 queue wait and first chunk, outcomes, throughput; high's p99 loaded ÷
unloaded off vs on (acceptance: ≤ 1.2 with preemption on); suspensions and resumes from the worker's
heartbeats; finals counted per request id on the wire (every request must end with exactly one).
The engine is FakeEngine by default, 64 tokens at 64 tokens/s (1 s answers): a phase needs ~100 high
requests for a p99 and so minutes, on two cores shared with other work the embedded model's speed would
drift between phases (its capacity was measured once), and queue wait is a matter of the scheduler, not
of the model. `--engine llama` runs the embedded model. Preemption's minimum run time defaults to 0.05 s:
the broker's 1 s is meant for the reference's 10-30 s answers; here answers take 1 s.
"""
