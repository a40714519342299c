"""Stage-1 vector indexes over the library's unit embeddings: inner product = cosine.

- `ExactIndex`: one torch matmul over all embeddings and a top-k; exact, no build, memory V * d * 4 bytes.
- `FaissIndex`: a faiss HNSW graph (approximate; `faiss.index` in the library folder), for libraries where the
  exact scan is too slow; `ef_search` trades latency for recall.
- `QdrantIndex`: the embeddings in a Qdrant collection (point id = library row), in-process (":memory:" or a
  folder) or on a server (a URL), for libraries whose stage 1 lives on other machines.

Every backend answers `search(queries (Q, d), n) -> (scores (Q, n), rows (Q, n))`, best first, rows into the
library's row order (-1 where fewer than n videos exist).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

BACKENDS = ("exact", "faiss", "qdrant")
FAISS_FILE = "faiss.index"
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 80
# recall@50 of the candidates against exact search, 200 queries near a topic of bench_library.py's 10 000-video
# library: 0.935 at efSearch 128, 0.999 at 512 (0.42 ms a query), 1.000 at 2048 (1.25 ms)
HNSW_EF_SEARCH = 512
QDRANT_BATCH = 1024


class ExactIndex:
    def __init__(self, embeddings: np.ndarray):
        self.embeddings = torch.tensor(embeddings, dtype=torch.float32)  # a copy: arrow's arrays are read-only

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores = torch.from_numpy(np.asarray(queries, dtype=np.float32)) @ self.embeddings.T  # (Q, V)
        top = scores.topk(min(n, len(self)), dim=1)
        return _padded(top.values.numpy(), top.indices.numpy(), n)


class FaissIndex:
    def __init__(self, index):
        self.index = index

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(cls, embeddings: np.ndarray, neighbours: int = HNSW_NEIGHBOURS) -> FaissIndex:
        import faiss

        index = faiss.IndexHNSWFlat(embeddings.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        return cls(index)

    @classmethod
    def load(cls, folder: Path) -> FaissIndex:
        import faiss

        return cls(faiss.read_index(str(folder / FAISS_FILE)))

    def save(self, folder: Path) -> Path:
        import faiss

        temporary = folder / f".{FAISS_FILE}.tmp"
        faiss.write_index(self.index, str(temporary))
        return temporary.replace(folder / FAISS_FILE)

    def search(self, queries: np.ndarray, n: int, ef_search: int = HNSW_EF_SEARCH) -> tuple[np.ndarray, np.ndarray]:
        self.index.hnsw.efSearch = max(ef_search, n)
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), n)
        return scores, rows


class QdrantIndex:
    """location: ":memory:", a folder (Qdrant's local mode, in this process) or an http(s) URL of a server."""

    def __init__(self, location: str, collection: str, dim: int):
        from qdrant_client import QdrantClient

        if location == ":memory:":
            self.client = QdrantClient(location=":memory:")
        elif location.startswith(("http://", "https://")):
            self.client = QdrantClient(url=location)
        else:
            self.client = QdrantClient(path=location)
        self.collection, self.dim = collection, dim

    def close(self) -> None:
        """Release the client (a local-mode folder is locked while a client has it open)."""
        self.client.close()

    def __len__(self) -> int:
        if not self.client.collection_exists(self.collection):
            return 0
        return self.client.count(self.collection, exact=True).count

    def upload(self, embeddings: np.ndarray, first_row: int = 0) -> None:
        """Add rows first_row, first_row + 1, ... (creating the collection when it is missing)."""
        from qdrant_client import models

        if not self.client.collection_exists(self.collection):
            vectors = models.VectorParams(size=self.dim, distance=models.Distance.DOT)
            self.client.create_collection(self.collection, vectors_config=vectors)
        for start in range(0, len(embeddings), QDRANT_BATCH):
            chunk = embeddings[start : start + QDRANT_BATCH]
            ids = list(range(first_row + start, first_row + start + len(chunk)))
            self.client.upload_collection(self.collection, vectors=chunk.astype(np.float32), ids=ids, wait=True)

    def sync(self, embeddings: np.ndarray) -> QdrantIndex:
        """Upload the rows the collection does not have yet (a collection with more rows than the library is
        someone else's: refused)."""
        present = len(self)
        if present > len(embeddings):
            raise ValueError(
                f"Qdrant collection {self.collection!r} has {present} points, the library {len(embeddings)} videos: "
                "it belongs to another library; pass another --qdrant-collection"
            )
        if present < len(embeddings):
            self.upload(embeddings[present:], first_row=present)
        return self

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_client import models

        requests = [models.QueryRequest(query=query.astype(np.float32).tolist(), limit=n) for query in queries]
        responses = self.client.query_batch_points(self.collection, requests=requests)
        scores = np.full((len(queries), n), -np.inf, np.float32)
        rows = np.full((len(queries), n), -1, np.int64)
        for index, response in enumerate(responses):
            for rank, point in enumerate(response.points):
                scores[index, rank], rows[index, rank] = point.score, int(point.id)
        return scores, rows


def _padded(scores: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    missing = n - scores.shape[1]
    if missing > 0:
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, missing)), constant_values=-1)
    return scores, rows.astype(np.int64)
