"""`--visualize K`: the perturbation grid and the ranking lists of K queries, before and after."""

import os

import torch

from reid.data import read_image
from reid.evaluation.figures import perturbation_figure, ranking_figure
from reid.runtime import distributed


class Pictures:
    """`--visualize K`: what a researcher looks at after an attack.

    A perturbation grid (clean / adversarial / amplified perturbation) of the first
    attacked images, and for K queries their top-10 gallery before and after the
    attack. For query attacks the attacked query is shown; for gallery attacks the
    ranking is the attacked one but the thumbnails are the clean gallery images.
    Under torchrun every process keeps what it attacked, `gather` merges it and rank 0
    draws: the same pictures as one process.
    """

    def __init__(self, out, attack, query, gallery, picked, transform, query_attacked, grid_size=8):
        self.out, self.attack, self.query, self.gallery = out, attack, query, gallery
        self.picked, self.transform, self.grid_size = set(picked), transform, grid_size
        self.query_attacked = query_attacked
        self.grid, self.adv_queries = {}, {}  # index -> (clean, adv); index -> adv

    def __call__(self, clean, adv, indices, attacked):
        """`attack_split`'s per-batch hook: keep what the pictures need."""
        for j, i in enumerate(indices.tolist()):
            if len(self.grid) < self.grid_size:  # the first images attacked, in split order
                self.grid[i] = (clean[j].cpu(), adv[j].cpu())
            if self.query_attacked and i in self.picked:
                self.adv_queries[i] = adv[j].cpu()

    def gather(self):
        """Every process's kept images (under torchrun; nothing to do otherwise)."""
        parts = distributed.all_gather_object((self.grid, self.adv_queries))
        if len(parts) > 1:
            grid = {i: pair for g, _ in parts for i, pair in g.items()}
            self.grid = {i: grid[i] for i in sorted(grid)[: self.grid_size]}
            self.adv_queries = {i: a for _, q in parts for i, a in q.items()}

    def _load(self, samples):
        return torch.stack([self.transform(read_image(s.path)) for s in samples])

    @distributed.main_only
    def write(self, clean_dist, adv_dist):
        pairs = [self.grid[i] for i in sorted(self.grid)]
        perturbation_figure(torch.stack([c for c, _ in pairs]), torch.stack([a for _, a in pairs]),
                            os.path.join(self.out, f"perturbation_{self.attack}.png"))
        os.makedirs(os.path.join(self.out, "rankings"), exist_ok=True)
        for q in sorted(self.picked):
            rows = []
            for label, dist in (("clean", clean_dist), (self.attack, adv_dist)):
                top = torch.argsort(dist[q])[:10].tolist()
                rows.append((label, self._load([self.gallery.samples[i] for i in top]),
                             [self.gallery.pids[i] == self.query.pids[q] for i in top]))
            clean_query = self._load([self.query.samples[q]])[0]
            adv_query = self.adv_queries.get(q, clean_query)
            name = os.path.splitext(os.path.basename(self.query.samples[q].path))[0]
            ranking_figure([clean_query, adv_query], rows,
                           os.path.join(self.out, "rankings", f"{self.attack}_{name}.png"))
