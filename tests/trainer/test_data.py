"""Datasets: the synthetic writer, latent scaling, exact loader resume, the data tools."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from streaming.base.local import LocalDataset

from diffusion_trainer.cli import run_data_command
from diffusion_trainer.config import DatasetConfig, TrainerConfig
from diffusion_trainer.data import TrainLoader, build_streaming_dataset
from diffusion_trainer.data_precompute import load_encoders, merge_partitions, precompute_partition
from diffusion_trainer.empty_caption import (
    EMPTY_CAPTION_FILE,
    encode_empty_caption,
    load_empty_caption,
)
from diffusion_trainer.encoders import (
    load_text_encoder,
    load_tokenizer,
    load_vae,
    vae_scaling_factor,
)
from diffusion_trainer.step import prepare_precomputed
from diffusion_trainer.synthetic_shapes import COLOURS, SHAPES


def test_synthetic_dataset_is_balanced_captioned_shapes(synth_dataset: Any) -> None:
    raw = LocalDataset(str(synth_dataset.raw))
    captions = Counter(raw[i]["caption"] for i in range(len(raw)))
    assert len(raw) == 192
    assert set(captions) == {f"a {c} {s}" for c in COLOURS for s in SHAPES}
    assert len(set(captions.values())) == 1  # every combination equally often
    image = Image.open(io.BytesIO(raw[0]["image"]))
    assert image.size == (64, 64)
    red_pixels = np.asarray(image.convert("RGB"))[..., 0] > 200  # sample 0: a red circle
    assert 0.1 < red_pixels.mean() < 0.6
    tokenizer = load_tokenizer(str(synth_dataset.encoders))
    for word in ("red", "yellow", "triangle"):
        assert tokenizer.tokenize(f"a {word}") == ["a</w>", f"{word}</w>"]


def test_latents_are_stored_raw_and_scaled_exactly_once(synth_dataset: Any) -> None:
    vae = load_vae(str(synth_dataset.encoders), torch.device("cpu"), torch.float32)
    scale = vae_scaling_factor(vae)
    latents = LocalDataset(str(synth_dataset.latents))
    sample = latents[0]
    assert sample["latents"].dtype == np.float16 and sample["latents"].shape == (4, 8, 8)
    assert sample["text_hidden"].dtype == np.float16 and sample["text_hidden"].shape == (77, 64)
    assert sample["latent_scale"] == pytest.approx(scale)
    raw = np.stack([latents[i]["latents"] for i in range(64)]).astype(np.float32)
    assert raw.std() == pytest.approx(1 / scale, rel=0.25)  # stored unscaled
    # The trainer multiplies once: unit-variance inputs (twice would give std ~= scale).
    loader = TrainLoader(
        build_streaming_dataset(
            DatasetConfig(local=str(synth_dataset.latents), shuffle=False),
            micro_batch_size=64,
            seed=0,
            tokenizer=None,
        ),
        micro_batch_size=64,
        num_workers=0,
        pin_memory=False,
    )
    config = TrainerConfig.model_validate({"data": {"train": {"captionDropProb": 0.0}}})
    inputs = prepare_precomputed(loader.next_batch(), config, None, torch.device("cpu"))
    assert inputs.latents.std().item() == pytest.approx(1.0, rel=0.25)
    assert torch.allclose(inputs.latents[0], torch.from_numpy(raw[0]) * scale, atol=1e-3)


def test_dropped_captions_are_the_encoded_empty_caption(synth_dataset: Any, tmp_path: Path) -> None:
    """Stored once beside the dataset, fetched from `remote` like the shards, substituted for
    every dropped caption: what a pipeline encodes for "" at inference."""
    text = load_text_encoder(str(synth_dataset.encoders), torch.device("cpu"), torch.float32)
    expected = torch.from_numpy(encode_empty_caption(text)).float()
    cache = tmp_path / "cache"
    dataset = DatasetConfig(remote=str(synth_dataset.latents), local=str(cache), shuffle=False)
    stored = load_empty_caption(dataset)
    assert stored is not None and (cache / EMPTY_CAPTION_FILE).is_file()
    assert torch.equal(stored.float(), expected)
    assert expected.abs().sum() > 0  # not the zeros it replaces
    loader = make_loader(synth_dataset.latents, micro_batch_size=8)
    batch = loader.next_batch()
    config = TrainerConfig.model_validate({"data": {"train": {"captionDropProb": 0.5}}})
    inputs = prepare_precomputed(batch, config, stored, torch.device("cpu"))
    dropped = inputs.draws.drop_caption
    assert 0 < int(dropped.sum()) < 8
    for row, was_dropped in zip(inputs.text, dropped.tolist(), strict=True):
        assert torch.equal(row, expected) is was_dropped


def test_a_dataset_without_the_empty_caption_falls_back_to_zeros(tmp_path: Path) -> None:
    assert load_empty_caption(DatasetConfig(local=str(tmp_path))) is None


def make_loader(path: Path, micro_batch_size: int = 4) -> TrainLoader:
    dataset = build_streaming_dataset(
        DatasetConfig(local=str(path)), micro_batch_size=micro_batch_size, seed=5, tokenizer=None
    )
    return TrainLoader(dataset, micro_batch_size, num_workers=0, pin_memory=False)


@pytest.mark.parametrize("num_before", [5, 50])  # mid-epoch 0; mid-epoch 1 (48 per epoch)
def test_loader_resumes_mid_epoch_exactly(synth_dataset: Any, num_before: int) -> None:
    loader = make_loader(synth_dataset.latents)
    seen = [loader.next_batch().sample_ids for _ in range(num_before)]
    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(4)]
    del loader
    resumed = make_loader(synth_dataset.latents)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as stored in a checkpoint
    actual = [resumed.next_batch() for _ in range(4)]
    assert [b.sample_ids for b in actual] == [b.sample_ids for b in expected]
    assert [b.epoch for b in actual] == [b.epoch for b in expected] == [num_before // 48] * 4
    first_epoch = [i for ids in seen[:48] for i in ids]
    if num_before >= 48:
        assert sorted(first_epoch) == list(range(192))  # an epoch is a permutation


def test_convert_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (80, 60), (255, 0, 0)).save(images / "red.png")
    (images / "red.txt").write_text("a red rectangle\n")
    Image.new("RGB", (60, 80), (0, 0, 255)).save(images / "sub" / "blue.jpg")
    (images / "metadata.jsonl").write_text(
        json.dumps({"file_name": "sub/blue.jpg", "text": "blue"})
    )
    out = tmp_path / "mds"
    assert run_data_command(["convert", "--images", str(images), "--out", str(out)]) == 0
    assert "converting: 2 images" in capsys.readouterr().err  # the count and the rate, on stderr
    converted = LocalDataset(str(out))
    assert sorted(converted[i]["caption"] for i in range(2)) == ["a red rectangle", "blue"]
    assert (images / "red.png").read_bytes() in {converted[i]["image"] for i in range(2)}
    (images / "orphan.png").write_bytes((images / "red.png").read_bytes())
    assert run_data_command(["convert", "--images", str(images), "--out", str(tmp_path / "x")]) == 2


def test_convert_parquet_needs_pyarrow_or_converts(tmp_path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        code = run_data_command(
            ["convert", "--parquet", str(tmp_path / "a.parquet"), "--out", str(tmp_path / "mds")]
        )
        assert code == 2  # with a message naming pyarrow
        return
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    table = pa.table({"image": [{"bytes": buffer.getvalue()}], "caption": ["black"]})
    pq.write_table(table, tmp_path / "a.parquet")
    assert (
        run_data_command(
            ["convert", "--parquet", str(tmp_path / "a.parquet"), "--out", str(tmp_path / "mds")]
        )
        == 0
    )
    assert LocalDataset(str(tmp_path / "mds"))[0]["caption"] == "black"


def test_precompute_partitions_merge_to_the_single_pass(synth_dataset: Any, tmp_path: Path) -> None:
    """What torchrun ranks write (slices + merged index) equals one process's output."""
    source = str(synth_dataset.encoders)
    encoders = load_encoders(source, source, torch.device("cpu"))
    out = str(tmp_path / "merged")
    raw = str(synth_dataset.raw)
    options = {"world_size": 2, "resolution": 64, "batch_size": 40}
    counts = [precompute_partition(raw, out, encoders, rank=rank, **options) for rank in (0, 1)]
    merge_partitions(out)
    assert counts == [96, 96]
    merged, single = LocalDataset(out), LocalDataset(str(synth_dataset.latents))
    assert len(merged) == len(single) == 192
    for index in (0, 95, 96, 191):
        assert merged[index]["caption"] == single[index]["caption"]
        assert np.allclose(merged[index]["latents"], single[index]["latents"], atol=2e-3)
        assert np.allclose(merged[index]["text_hidden"], single[index]["text_hidden"], atol=2e-3)


def test_data_command_synth_and_precompute(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    args = ["synth", "--out", str(out), "--num-samples", "12", "--no-latents", "--seed", "1"]
    assert run_data_command(args) == 0
    assert len(LocalDataset(str(out / "raw"))) == 12
    assert not (out / "latents").exists()
    encoders = str(out / "encoders")
    assert (
        run_data_command(
            [
                "precompute",
                "--input",
                str(out / "raw"),
                "--out",
                str(tmp_path / "latents"),
                "--vae",
                encoders,
                "--text-encoder",
                encoders,
                "--resolution",
                "64",
            ]
        )
        == 0
    )
    latents = LocalDataset(str(tmp_path / "latents"))
    assert len(latents) == 12 and latents[0]["latents"].shape == (4, 8, 8)
    empty = np.load(tmp_path / "latents" / EMPTY_CAPTION_FILE)
    assert empty.shape == latents[0]["text_hidden"].shape and empty.dtype == np.float16


def test_streaming_options_reach_streaming_dataset(synth_dataset: Any, tmp_path: Path) -> None:
    """Cache limit, predownload, retries, canonical nodes and shuffle settings from the config;
    a mixture of two streams by proportion; no cache limit on local-only data (Streaming would
    evict the dataset itself)."""
    second = shutil.copytree(synth_dataset.latents, tmp_path / "second")
    config = DatasetConfig(
        streams=[
            {
                "remote": str(synth_dataset.latents),
                "local": str(tmp_path / "cache-a"),
                "proportion": 3,
            },
            {"local": str(second), "proportion": 1},
        ],
        cache_limit="2gb",
        predownload=64,
        download_retry=5,
        download_timeout_seconds=12.5,
        num_canonical_nodes=4,
        shuffle_algo="py1s",
        shuffle_block_size=1024,
    )
    dataset: Any = build_streaming_dataset(config, micro_batch_size=4, seed=1, tokenizer=None)
    assert dataset.cache_limit == 2 * 1024**3  # Streaming counts in binary units
    assert dataset.predownload == 64
    assert dataset.num_canonical_nodes == 4
    assert (dataset.shuffle_algo, dataset.shuffle_block_size) == ("py1s", 1024)
    assert [stream.proportion for stream in dataset.streams] == [0.75, 0.25]  # normalised
    assert [stream.download_retry for stream in dataset.streams] == [5, 5]
    assert [stream.download_timeout for stream in dataset.streams] == [12.5, 12.5]
    local_only = DatasetConfig(local=str(second), cache_limit="2gb")
    del dataset
    assert build_streaming_dataset(local_only, 4, 1, None).cache_limit is None


def test_a_mixture_needs_proportions_on_every_stream_or_none() -> None:
    with pytest.raises(ValueError, match="proportion on every stream"):
        DatasetConfig(streams=[{"local": "/a", "proportion": 1}, {"local": "/b"}])
    with pytest.raises(ValueError, match="replaces remote"):
        DatasetConfig(remote="s3://x", streams=[{"local": "/a"}])


def test_noise_drawn_in_loader_workers_equals_noise_drawn_in_the_loop(
    synth_dataset: Any, tmp_path: Path
) -> None:
    """Across an epoch boundary, with a worker process: the draws that come with each batch
    are the ones the loop would draw for the same (seed, epoch, sample id)."""
    from diffusion_trainer.data import NoiseSettings
    from diffusion_trainer.objective import draw_sample_noise

    local = shutil.copytree(synth_dataset.latents, tmp_path / "latents")
    settings = NoiseSettings(seed=5, caption_drop_prob=0.5, offset_noise=0.1)
    config = DatasetConfig(local=str(local), num_workers=1)
    dataset = build_streaming_dataset(config, 32, seed=5, tokenizer=None, noise=settings)
    loader = TrainLoader(dataset, 32, num_workers=1, pin_memory=False)
    batches_per_epoch = len(dataset) // 32
    epochs_seen = set()
    for _ in range(batches_per_epoch + 2):
        batch = loader.next_batch()
        epochs_seen.add(batch.epoch)
        expected = draw_sample_noise(
            batch.sample_ids,
            batch.epoch,
            settings.seed,
            tuple(batch.fields["latents"].shape[1:]),
            caption_drop_prob=settings.caption_drop_prob,
            offset_noise=settings.offset_noise,
        )
        assert (batch.fields["noise_epoch"] == batch.epoch).all()
        assert torch.equal(batch.fields["noise"], expected.noise)
        assert torch.equal(batch.fields["timestep"], expected.timesteps)
        assert torch.equal(batch.fields["drop_caption"], expected.drop_caption)
    assert epochs_seen == {0, 1}


def test_synthesize_refuses_a_directory_it_did_not_write(tmp_path: Path) -> None:
    from diffusion_trainer.config import ConfigError, SyntheticDataConfig
    from diffusion_trainer.synthetic_source import ensure_synthetic_data

    out = tmp_path / "someone-elses"
    out.mkdir()
    (out / "precious.bin").write_bytes(b"data")
    with pytest.raises(ConfigError, match=r"data\.synthesize\.out=.* is not a synthetic dataset"):
        ensure_synthetic_data(SyntheticDataConfig(out=str(out)), local_rank=0)
    assert (out / "precious.bin").read_bytes() == b"data"  # left alone
