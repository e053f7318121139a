"""Stateful test: GroupCommitEngine on MemoryBackend against the queue spec.

Hypothesis drives random sequences of enqueues, claims, heartbeats, completions, failures,
dead-letter purges, time steps, concurrent groups of mutations and injected storage faults (dropped requests
and responses, 409, 503). After every step the results must equal the spec's and the stored
``queue.json`` must decode to the spec's model.
"""

from __future__ import annotations

import random

import anyio
import anyio.from_thread
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from osqueue.engine import EngineConfig, GroupCommitEngine
from osqueue.spec import queue as spec
from osqueue.state import decode_state, to_model
from osqueue.storage.memory import Fault, MemoryBackend

KEY = "queue.json"
TIMEOUT = 10.0
TYPES = ("a", "b")


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.backend = MemoryBackend()
        self.clock = ManualClock()
        self.model = spec.QueueModel()
        self.claims: list[spec.Claimed] = []
        self.portal_manager = anyio.from_thread.start_blocking_portal("trio")
        self.portal = self.portal_manager.__enter__()
        config = EngineConfig(
            lease_seconds=1e6, heartbeat_timeout=TIMEOUT, backoff_base=0.0005,
            backoff_max=0.002,
        )
        self.engine = GroupCommitEngine(
            self.backend, address="broker", config=config, clock=self.clock,
            rng=random.Random(7),
        )
        self.engine_manager = self.portal.wrap_async_context_manager(self.engine)
        self.engine_manager.__enter__()

    def teardown(self) -> None:
        try:
            self.engine_manager.__exit__(None, None, None)
        finally:
            self.portal_manager.__exit__(None, None, None)

    # Helpers ------------------------------------------------------------------------------

    def submit(self, mutation: spec.Mutation) -> spec.Result:
        self.model = spec.expire(self.model, self.clock.now, TIMEOUT)
        self.model, expected = spec.apply(self.model, mutation, self.clock.now)
        result = self.portal.call(self.engine.submit, mutation)
        assert result == expected, (mutation, result, expected)
        if isinstance(result, spec.Claimed):
            self.claims.append(result)
        return result

    def held(self, index: int) -> spec.Claimed:
        return self.claims[index % len(self.claims)]

    # Rules --------------------------------------------------------------------------------

    @rule(
        types=st.lists(st.sampled_from(TYPES), min_size=1, max_size=3),
        explicit=st.sampled_from([None, None, "x", "y"]),
        max_attempts=st.integers(1, 3),
    )
    def enqueue(self, types, explicit, max_attempts):
        jobs = tuple(
            spec.NewJob(job_type, {"i": index}, max_attempts, explicit if index == 0 else None)
            for index, job_type in enumerate(types)
        )
        self.submit(spec.Enqueue(jobs))

    @rule(types=st.sampled_from([None, ("a",), ("b",), ("a", "b")]))
    def claim(self, types):
        self.submit(spec.Claim("worker", types))

    @precondition(lambda self: self.claims)
    @rule(index=st.integers(0, 100))
    def heartbeat(self, index):
        held = self.held(index)
        self.submit(spec.Heartbeat(held.job_id, held.token))

    @precondition(lambda self: self.claims)
    @rule(index=st.integers(0, 100))
    def complete(self, index):
        held = self.held(index)
        self.submit(spec.Complete(held.job_id, held.token))

    @precondition(lambda self: self.claims)
    @rule(index=st.integers(0, 100), delay=st.sampled_from([0.0, 0.0, 5.0]))
    def fail(self, index, delay):
        held = self.held(index)
        self.submit(spec.Fail(held.job_id, held.token, "boom", delay))

    @rule(
        job_ids=st.sampled_from([None, ("x",), ("y", "job-1")]),
        before=st.sampled_from([None, None, 1010.0]),
    )
    def purge_dead(self, job_ids, before):
        self.submit(spec.PurgeDead(job_ids, before))

    @rule(seconds=st.sampled_from([1.0, 4.0, 11.0]))
    def advance_time(self, seconds):
        self.clock.now += seconds

    @rule(fault=st.sampled_from([
        Fault.DROP_RESPONSE, Fault.DROP_REQUEST, Fault.CONCURRENT_REQUEST, Fault.UNAVAILABLE,
    ]))
    def inject_write_fault(self, fault):
        self.backend.inject(fault, operations=("write",))

    @rule(
        count=st.integers(2, 6),
        kinds=st.lists(st.sampled_from(["enqueue", "claim", "complete"]), min_size=6, max_size=6),
    )
    def concurrent_group(self, count, kinds):
        mutations = []
        for index in range(count):
            kind = kinds[index]
            if kind == "complete" and self.claims:
                held = self.held(index)
                mutations.append(spec.Complete(held.job_id, held.token))
            elif kind == "claim":
                mutations.append(spec.Claim(f"worker-{index}"))
            else:
                mutations.append(spec.Enqueue.one("a", index))

        results: dict[int, spec.Result] = {}

        async def run_all():
            async def one(index, *, task_status):
                # started() does not yield, so submit() queues the mutation before the
                # parent starts the next task: the mutations queue in index order.
                task_status.started()
                results[index] = await self.engine.submit(mutations[index])

            async with anyio.create_task_group() as group:
                for index in range(len(mutations)):
                    await group.start(one, index)

        self.portal.call(run_all)
        for index in range(len(mutations)):
            self.model = spec.expire(self.model, self.clock.now, TIMEOUT)
            self.model, expected = spec.apply(self.model, mutations[index], self.clock.now)
            assert results[index] == expected, (mutations[index], results[index], expected)
            if isinstance(expected, spec.Claimed):
                self.claims.append(expected)

    # Invariants ---------------------------------------------------------------------------

    @invariant()
    def stored_state_matches_model(self):
        read = self.portal.call(self.backend.read, KEY)
        state = decode_state(read.data)
        model = spec.expire(self.model, state.broker.heartbeat_at, TIMEOUT)
        assert to_model(state, model.done) == model

    @invariant()
    def claimed_jobs_have_one_holder(self):
        read = self.portal.call(self.backend.read, KEY)
        tokens = [job.claim_token for job in decode_state(read.data).jobs if job.claim_token]
        assert len(tokens) == len(set(tokens))


EngineMachine.TestCase.settings = settings(
    max_examples=75, stateful_step_count=40, deadline=None
)
TestEngineAgainstSpec = EngineMachine.TestCase
