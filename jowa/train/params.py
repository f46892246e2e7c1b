"""The training sections of params.yaml: tokenizer, models, pretrain and finetune (spec 2.7, 4.4-4.5, 6).

Every value the paper or the reference code fixes is a key here with that value in params.yaml; the
training code repeats none of them. Batch sizes are segments (frames for the tokenizer) per optimizer
step summed over all ranks, with gradients averaged, so a run on 8 GPUs and one on 1 GPU at the same
batch train the same model. The reference never averages gradients across its GPUs (spec gotcha 21),
so its released models were effectively trained at 64 segments and 256 tokenizer frames per step: those
are the paper values in params.yaml; the configured totals (512 / 2048) are valid values too.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from jowa.core.params_base import Section, Seed

Positive = Annotated[int, Field(ge=1)]
LearningRate = Annotated[float, Field(gt=0, le=1)]
Betas = tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]]
Dropout = Annotated[float, Field(ge=0, lt=1)]
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class RunParams(Section):
    """What every training run has: length, checkpointing, logging, seed and GPU settings."""

    steps: Positive
    """optimizer steps of the whole run"""
    checkpoint_every: Positive
    """steps between resumable checkpoints (written atomically; a killed run resumes from the last)"""
    log_every: Positive
    """steps between lines of metrics.jsonl (and TensorBoard points); losses are averaged over them"""
    seed: Seed
    """seed of the initial weights, the data order and dropout"""
    precision: Literal["bf16", "fp32"]
    """autocast dtype of forward passes on a GPU (weights and optimizer stay float32); CPUs run float32"""
    compile: bool
    """torch.compile the model on a GPU (ignored on CPUs)"""


class TokenizerArch(Section):
    """The VQ-VAE's shape (spec 2.1); the 84x84 frames need a 6x6 token grid: 3 levels (x7, x2)."""

    vocab_size: Positive
    """codebook entries (the world model's observation vocabulary)"""
    embed_dim: Positive
    """codebook vector size"""
    z_channels: Positive
    """encoder output channels"""
    ch: Positive
    """base convolution channels"""
    ch_mult: Annotated[tuple[Positive, ...], Field(min_length=3, max_length=3)]
    """channel multiplier per level"""
    num_res_blocks: Annotated[int, Field(ge=0)]
    """residual blocks per level"""
    attn_resolutions: tuple[Positive, ...]
    """feature-map sides with self-attention blocks"""
    dropout: Dropout
    """dropout inside the residual blocks"""


class TokenizerParams(RunParams):
    arch: TokenizerArch
    """the tokenizer's architecture"""
    batch: Positive
    """frames per step, summed over ranks (effective reference setting 256; configured 2048, gotcha 21)"""
    lr: LearningRate
    """Adam learning rate (no weight decay)"""
    adam_betas: Betas
    """Adam betas"""
    adam_eps: Annotated[float, Field(gt=0)]
    """Adam epsilon"""
    grad_clip: Annotated[float, Field(gt=0)]
    """global gradient-norm clip"""
    perceptual_weights: str | None
    """LPIPS weights of the perceptual loss: `lpips` (the paper's: the lpips package's heads and torchvision's
    VGG16, fetched once into torch's hub cache), a VGG16 + LPIPS state file, or null (no perceptual loss)"""


class ModelArch(Section):
    """A JOWA size (spec 3.3): transformer and Q-ensemble shape, as `JOWAConfig.from_arch` takes it."""

    layers: Positive
    """transformer blocks"""
    heads: Positive
    """attention heads"""
    width: Positive
    """embedding width"""
    q_hidden: Positive
    """hidden width of each Q-ensemble member"""
    q_ensemble: Positive
    """Q-ensemble members"""
    dropout: Dropout
    """transformer dropout (embeddings, attention, residuals)"""
    q_dropout: Dropout
    """dropout after the first Q-head layer"""


class WorldTrainingParams(RunParams):
    """The world-action model's optimization, shared by pretraining and fine-tuning."""

    batch: Positive
    """segments per optimizer step, summed over ranks"""
    micro_batch: Positive | None
    """segments per forward/backward pass on one rank (gradients accumulate); null: the rank's whole share"""
    segment_stride: Positive
    """steps between the starts of consecutive segments of an episode (spec 1.3: 4, fine-tuning 1)"""
    world_lr: LearningRate
    """AdamW learning rate of the transformer, embeddings and world heads"""
    critic_lr: LearningRate
    """AdamW learning rate of the Q head"""
    weight_decay: Annotated[float, Field(ge=0)]
    """AdamW weight decay of linear weights and of the whole Q head (spec 4.5, gotcha 17)"""
    adam_betas: Betas
    """AdamW betas"""
    adam_eps: Annotated[float, Field(gt=0)]
    """AdamW epsilon"""
    grad_clip: Annotated[float, Field(gt=0)]
    """global gradient-norm clip over the whole model"""
    target_update: Positive
    """steps between hard copies of the Q head into the target head"""
    supervised_weight: Annotated[float, Field(ge=0)]
    """weight of the world-model losses while the critic trains"""
    gamma: Annotated[float, Field(gt=0, le=1)]
    """discount of the one-step C51 target"""
    cql_weight: Annotated[float, Field(ge=0)]
    """CQL penalty weight alpha"""


class PretrainParams(WorldTrainingParams):
    critic_after: Annotated[int, Field(ge=0)]
    """stage 1 (world-model losses only) runs to this step; then fresh optimizers and stage 2"""
    stage2_world_lr: LearningRate
    """world learning rate of stage 2 (configured 5e-5; the reference's single run keeps 1e-4, gotcha 22)"""
    segment_length: Positive
    """steps per training segment, the model's context (spec 1.3: 8)"""
    atoms: Annotated[int, Field(ge=2)]
    """C51 atoms"""
    vmin: float
    """lowest C51 atom"""
    vmax: float
    """highest C51 atom"""


class ImaginationParams(Section):
    """Segments synthesized by beam search in the world model for the critic (spec 5.5, 6)."""

    enabled: bool
    """synthesize segments (the reference's default: off; its README's Pong command: on)"""
    after: Annotated[int, Field(ge=0)]
    """steps of fine-tuning before imagination starts"""
    horizon: Annotated[int, Field(ge=1, le=7)]
    """imagined steps at the end of each segment; the first 8 - horizon steps are a real prompt"""
    beam_width: Positive
    """beam search width K"""
    imagined_batch: Positive
    """imagined segments in each step's batch, which keeps batch - imagined_batch real segments"""
    buffer_factor: Positive
    """FIFO capacity of imagined segments, in multiples of the fine-tuning set's segments"""


class SelectionParams(Section):
    """Which checkpoint is fine-tuning's result (gotcha 23)."""

    rule: Literal["final", "best_test_return"]
    """final: the last weights; best_test_return: the reference's rule, a selection on test episodes
    (keep the weights whenever the evaluation return is >= 0.8 x the best so far)"""
    every: Positive
    """steps between evaluations (best_test_return only)"""
    episodes: Positive
    """greedy evaluation episodes per evaluation"""
    max_steps: Positive | None
    """agent steps after which an evaluation episode is cut; null: the protocol's cap"""
    protocol: Literal["jowa", "standard"]
    """environment protocol of the evaluations"""
    context: Annotated[int, Field(ge=1, le=8)]
    """steps of history of the greedy agent"""


class FinetuneParams(WorldTrainingParams):
    tune_tokenizer: bool
    """train the tokenizer too (reference: yes); then batches are encoded from frames every step"""
    tokenizer_lr: LearningRate
    """Adam learning rate of the tokenizer"""
    tokenizer_batch: Positive
    """frames per tokenizer step, drawn from the real steps of the world model's batch"""
    tokenizer_grad_clip: Annotated[float, Field(gt=0)]
    """global gradient-norm clip of the tokenizer"""
    imagination: ImaginationParams
    """synthesized segments for the critic"""
    selection: SelectionParams
    """which checkpoint is the result"""

    @model_validator(mode="after")
    def _imagined_batch_fits(self) -> FinetuneParams:
        if self.imagination.enabled and self.imagination.imagined_batch >= self.batch:
            raise ValueError(
                f"imagination.imagined_batch {self.imagination.imagined_batch} leaves no real segment "
                f"of batch {self.batch}"
            )
        return self
