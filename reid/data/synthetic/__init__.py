"""Deterministic synthetic person re-ID dataset in the Market-1501 or open-reid layout.

Real re-ID datasets cannot be downloaded here, yet training, evaluation and the
attacks need data with the *structure* and roughly the *difficulty* of Market-1501.
This module draws one, and each choice below serves that aim:

* Same files as Market-1501: `bounding_box_train/`, `query/`, `bounding_box_test/`
  holding `PPPP_cCsS_FFFFFF_NN.jpg`, so the real parser reads it unchanged.
* Open set: training and test identities are disjoint, and person ids are scattered
  numbers in 1..1501 (as in Market), so relabelling to 0..N-1 is exercised.
* Cross-camera retrieval: every identity is seen by 2 to 6 cameras. A test identity
  has one query per camera and gallery images in each of its cameras, so every query
  keeps true matches after the Market protocol drops same-id same-camera images.
* Gallery noise as in Market: distractors (pid 0000, person-like figures that belong
  to no identity) and junk (pid -1: blurred, badly cropped or mostly background).
* Identity is learnable but not trivial: a person is a drawn figure (head, hair,
  torso, arms, legs, shoes) with clothing colours, a shirt pattern (stripes, checks,
  logo, two-tone or plain), sleeve and trouser length, body proportions, and maybe a
  hat or a bag. Colours come from small shared palettes, so many identities wear the
  same shirt and only the combination of cues tells them apart.
* Cameras change appearance: each camera has its own background, lighting gain,
  colour cast, saturation, contrast, blur, noise, shading direction, preferred
  viewpoint (front / back / side, which hides the logo or shows the backpack) and
  framing. A person's images in one camera form a tracklet (same viewpoint, similar
  framing, successive walking poses), so same-camera matches are easy and the model
  must learn to match across cameras.

Two options serve MetaAttack-style experiments, which need a second, "virtual" dataset:

* `layout="openreid"` writes the same images in the open-reid layout that PersonX,
  UnrealPerson and RandPerson come in for MetaAttack (`images/PPPPPPPP_CC_NNNN.jpg`
  with 0-based cameras, `meta.json`, `splits.json`), read by `--dataset openreid`.
  Each test identity's query is the first image of its camera, so that parser's
  query / gallery rule recovers the Market layout's split; distractors are pid 0
  (gallery only), and junk is not written (open-reid has no junk class).
* `style="virtual"` draws another population in a rendered, game-engine look:
  saturated palettes, clean sky-and-ground scenes with flat buildings, flat cel
  shading, no sensor noise or blur and a faint colour cast at most. Its people and
  cameras come from other random streams than the real style's, so the two are
  different datasets even with one seed. The default `style="real"` is unchanged,
  byte for byte.

Every random draw comes from a numpy Generator seeded by (seed, stream, index) and
images are saved with a fixed JPEG quality: the same arguments give byte-identical
files, and a person's attributes depend only on the seed, the style and its pid.

Modules: `appearance` (palettes, people, cameras, poses), `drawing` (one image), `writer`
(the dataset's files, `generate`, the command line).
"""

from reid.data.synthetic.writer import LAYOUTS, SPLITS, generate, main

__all__ = ["LAYOUTS", "SPLITS", "generate", "main"]
