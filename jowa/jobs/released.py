"""The `released` section of params.yaml: the reference's released JOWA checkpoints, evaluated beside ours.

The authors released JOWA-40M, 70M and 150M and their tokenizer as `.pt` state dicts in the reference
layout (`checkpoints/JOWA/JOWA_{40M,70M,150M}.pt`, `tokenizer.pt`). With `dir` set, the workflow imports
each (`jowa checkpoint import-reference`, once per file), evaluates it with the same rule and command as
our pretrained sizes (greedy and beam search on every pretraining game, the per-game beam settings of the
size of the same name) and reports it beside ours, labeled "released". With `dir: null` nothing changes.
The architectures are written out, not looked up, so that importing a file never depends on how our own
sizes are configured.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from jowa.core.params_base import Section
from jowa.train.params import ModelArch, ModelName, TokenizerArch

RELEASED = "released-"  # a released model's name in evaluation paths and reports: released-40M, ...
FileName = Annotated[str, Field(pattern=r"^[^/]+$")]


class ReleasedTokenizer(Section):
    file: FileName
    """the tokenizer's state dict in `dir` (.pt, .safetensors or .npz; the reference: tokenizer.pt)"""
    arch: TokenizerArch
    """its architecture (the reference's is the paper's, as in tokenizer.arch)"""


class ReleasedModel(Section):
    file: FileName
    """the model's state dict in `dir` (the reference: JOWA_40M.pt, JOWA_70M.pt, JOWA_150M.pt)"""
    arch: ModelArch
    """its architecture (the paper's presets for the reference's files)"""


class ReleasedParams(Section):
    dir: Annotated[str, Field(min_length=1)] | None
    """a directory holding the released files below (the reference's checkpoints/JOWA/); null: none"""
    tokenizer: ReleasedTokenizer
    """the tokenizer every released model plays with"""
    models: dict[ModelName, ReleasedModel]
    """released model name -> its file and architecture; evaluated as `released-{name}`, with the beam
    search settings of planning.sizes.{name}"""
