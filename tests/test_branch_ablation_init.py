"""The single-branch ablation of model 0.3 (training/configs/ablation03_single.json) starts from the distilled audio
encoder of a multi-scale `msync distill` run: `init_audio_from` must load the whole encoder into a generator with
`branch_levels` (0,), leave everything else at its fresh initialisation, and the ablated generator must then read
audio level 0 only."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from training.checkpoint import save_module
from training.models.generator import Generator, GeneratorConfig
from training.train_generator import GeneratorTrainer, TrainGeneratorConfig

AUDIO_KEYS = ("audio_stem.", "blocks.", "mfcc_mean", "mfcc_std")


def _tiny(**kw) -> GeneratorConfig:
    return GeneratorConfig(**{"audio_channels": 16, "landmark_embed": 16, "lstm_hidden": 16, "branch_hidden": 16, **kw})


def _trainer_with(G: Generator, tmp_path) -> GeneratorTrainer:
    """A trainer holding `G` as its generator, without loading data (what `setup` would have set)."""
    trainer = GeneratorTrainer(TrainGeneratorConfig(generator=G.cfg), tmp_path / "run")
    trainer.G, trainer.device, trainer.is_main = G, "cpu", False
    return trainer


@pytest.fixture
def distilled(tmp_path):
    """A multi-scale generator saved as a distill run saves it, with non-trivial MFCC statistics."""
    cfg = _tiny()
    torch.manual_seed(1)
    src = Generator(cfg)
    src.mfcc_mean.copy_(torch.linspace(-3.0, 3.0, cfg.n_mfcc))
    src.mfcc_std.copy_(torch.linspace(0.5, 2.0, cfg.n_mfcc))
    save_module(tmp_path / "distilled", src, {"kind": "generator", "step": 0, "generator": cfg})
    return src, tmp_path / "distilled"


def test_single_branch_generator_takes_the_whole_distilled_encoder(distilled, tmp_path):
    src, path = distilled
    torch.manual_seed(2)
    G = Generator(dataclasses.replace(src.cfg, branch_levels=(0,)))
    fresh = {k: v.clone() for k, v in G.state_dict().items()}
    _trainer_with(G, tmp_path).take_audio_encoder(str(path))
    theirs, taken = src.state_dict(), 0
    for k, v in G.state_dict().items():
        if k.startswith(AUDIO_KEYS):
            assert torch.equal(v, theirs[k]), k
            taken += 1
        else:
            assert torch.equal(v, fresh[k]), k
    # every level's blocks came over, level 3's included, though only level 0 feeds the single branch
    assert taken == sum(k.startswith(AUDIO_KEYS) for k in theirs)
    assert any(k.startswith(f"blocks.{len(G.blocks) - 1}.") for k in theirs)
    # one branch instead of four: fewer branch weights than the source's, kept at their fresh values above
    assert sum(p.numel() for p in G.branches.parameters()) < sum(p.numel() for p in src.branches.parameters())


def test_single_branch_output_reads_audio_level_0_only(distilled, tmp_path):
    src, path = distilled
    torch.manual_seed(3)
    G = Generator(dataclasses.replace(src.cfg, branch_levels=(0,))).eval()
    _trainer_with(G, tmp_path).take_audio_encoder(str(path))
    T, L = 6, G.cfg.lookahead_frames
    gen = torch.Generator().manual_seed(4)
    mfcc = torch.randn(1, 4 * (T + L), G.cfg.n_mfcc, generator=gen)
    x_ref = 0.5 + 0.05 * torch.randn(1, 68, 2, generator=gen)
    h0, c0 = G.initial_lstm_state(1, torch.Generator().manual_seed(5))

    def run() -> torch.Tensor:
        with torch.no_grad():
            return G(mfcc, x_ref, h0, c0, num_frames=T)

    base = run()
    last = len(G.blocks) - 1
    assert G.block_level[last] > 0
    with torch.no_grad():
        G.blocks[last].apply(lambda m: [p.add_(1.0) for p in m.parameters(recurse=False)])
    assert torch.equal(run(), base)  # a coarse level's block does not reach the output
    with torch.no_grad():
        G.blocks[0].apply(lambda m: [p.add_(1.0) for p in m.parameters(recurse=False)])
    assert not torch.allclose(run(), base)  # level 0's does


def test_encoder_of_another_width_is_refused(distilled, tmp_path):
    _, path = distilled
    G = Generator(_tiny(audio_channels=32, branch_levels=(0,)))
    with pytest.raises(ValueError, match="another architecture"):
        _trainer_with(G, tmp_path).take_audio_encoder(str(path))
