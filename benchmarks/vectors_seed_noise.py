"""How much nDCG@10 on vaswani-minilm (93 judged queries) moves when nothing but the k-means seed changes.

The issue #8 criterion asks the advisor's pick at 1/32 of the float32 corpus to be within 0.005 nDCG@10 of the
best row of the compressor table. This fits the table's best (PQ72x5) and the advisor's pick (PQ56x6), both with
fp16 codebooks, with k-means seeds 0-4, and prints each fit's nDCG@10, each setting's spread over seeds, and
the paired per-query difference with its standard error.

Run: ``python benchmarks/vectors_seed_noise.py`` (about 2 minutes). Data: ``$EMBADVISOR_SHARED_DATA`` or
``../shared/data``.
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vectors as vb  # noqa: E402

from embadvisor.vectors import QuerySet, compress, load_vector_data  # noqa: E402
from embadvisor.vectors.rebuild import vector_config  # noqa: E402

torch.set_num_threads(2)
d = vb.data_dir()
data = load_vector_data(d / "doc_vectors.npy", queries=d / "query_vectors.npy", qrels=d / "qrels.parquet",
                        doc_ids=d / "docs.parquet", query_ids=d / "queries.parquet")
qs = QuerySet.build("all", data.corpus, data.queries, None, data.qrels)


def per_query(ids: np.ndarray) -> np.ndarray:
    """nDCG@10 of each judged query (the same formula as ``embadvisor.vectors.evaluate.qrels_metrics``)."""
    disc = 1.0 / np.log2(np.arange(2, 12))
    out = []
    for row, labels in zip(ids, qs.qrels, strict=True):
        rel = {k: v for k, v in labels.items() if v > 0}
        if not rel:
            continue
        g = np.array([rel.get(int(x), 0.0) for x in row[:10]])
        ideal = np.sort(np.array(list(rel.values())))[::-1][:10]
        out.append((g * disc[:len(g)]).sum() / (ideal * disc[:len(ideal)]).sum())
    return np.array(out)


res = {}
for name, params in (("PQ72x5", dict(num_subvectors=72, nbits=5)), ("PQ56x6", dict(num_subvectors=56, nbits=6))):
    for seed in range(5):
        cfg = vector_config("vec_pq", dict(params, codebook_dtype="fp16", seed=seed))
        index, _ = compress(cfg, data.corpus)
        _, ids = index.search(qs.vectors, 100)
        res[(name, seed)] = per_query(ids)
        print(name, seed, index.nbytes, f"nDCG@10 {res[(name, seed)].mean():.4f}", flush=True)
for name in ("PQ72x5", "PQ56x6"):
    v = [res[(name, s)].mean() for s in range(5)]
    print(f"{name}: seeds 0-4 nDCG@10 mean {np.mean(v):.4f}, min {min(v):.4f}, max {max(v):.4f}, spread {max(v)-min(v):.4f}")
diffs = [res[("PQ72x5", s)] - res[("PQ56x6", s)] for s in range(5)]
for s, dd in enumerate(diffs):
    print(f"seed {s}: PQ72x5 - PQ56x6 = {dd.mean():+.4f}, paired SE {dd.std(ddof=1)/np.sqrt(len(dd)):.4f} over {len(dd)} queries")
