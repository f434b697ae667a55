"""The runtime: how records reach a processor's pure functions and how their results leave.

``engine`` is Faust's side (group membership, assignment, recovery, the fetch loop it hands over);
``batch`` is the data path (one fetched batch: merge, apply, publish, state, flush, commit);
``producer`` sends a batch's records through librdkafka and waits for them once.
"""
