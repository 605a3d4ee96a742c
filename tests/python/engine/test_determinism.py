"""A row's result does not depend on the batch it rode in or its position there."""

import asyncio

import numpy as np

import inferline as il
from inferline.demo import demo_model


async def test_bitwise_identical_alone_and_in_batches_of_any_size_and_order(engine, rng):
    config, mlp = demo_model()
    handle = engine.load(config, mlp)
    samples = rng.integers(0, 17, size=(40, 64)).astype(np.float32)
    samples[3, 5] = np.nan  # through the preprocessing's NaN fill too

    alone = []
    for s in samples:  # one at a time: batches of one row
        alone.append((await handle.infer_async({"pixels": s[None]}))["logits"].tobytes())

    for trial in range(4):
        order = rng.permutation(len(samples))
        # mixed request sizes: single rows and multi-row requests, all concurrent
        chunks, i = [], 0
        while i < len(order):
            k = int(rng.integers(1, 6))
            chunks.append(order[i:i + k])
            i += k
        results = await asyncio.gather(*(handle.infer_async({"pixels": samples[c]}) for c in chunks))
        for c, r in zip(chunks, results):
            for row, idx in enumerate(c):
                assert r["logits"][row].tobytes() == alone[idx], f"trial {trial}: row {idx} differs"
    sizes = [i for i, n in enumerate(handle.stats()["batch_size_counts"]) if n]
    assert len(sizes) > 2, sizes  # the rows really rode in batches of several sizes


def test_same_results_across_engines(rng):
    samples = rng.integers(0, 17, size=(16, 64)).astype(np.float32)
    outs = []
    for _ in range(2):  # two replicas of the same version
        with il.Engine() as e:
            config, mlp = demo_model()
            e.load(config, mlp)
            outs.append(e.infer(config.name, {"pixels": samples})["logits"].tobytes())
    assert outs[0] == outs[1]
