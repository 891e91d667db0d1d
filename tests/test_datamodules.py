"""Data modules: the order and seeds of sample sets, reference image sources and their bad input, reward
conditions over steps and ranks, the one image reader, and the sample-set fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lit_sdo.datamodules import (
    DIGIT_NAMES,
    BlockSampler,
    LabelSeedDataModule,
    PromptSeedDataModule,
    ReferenceImageDataModule,
    RewardPromptDataModule,
    digits_test_tensors,
    read_image_file,
)


def items(datamodule) -> list[dict]:  # noqa: ANN001
    return [datamodule.dataset[i] for i in range(datamodule.num_samples)]


# ----- sample sets --------------------------------------------------------------------------------------------


def test_label_seed_samples_cycle_classes_fastest_with_consecutive_seeds() -> None:
    dm = LabelSeedDataModule(classes=[2, 5], per_class=3, seed=10, batch_size=4)
    assert dm.num_samples == 6
    rows = [(int(x["index"]), int(x["label"]), int(x["seed"])) for x in items(dm)]
    assert rows == [(0, 2, 10), (1, 5, 11), (2, 2, 12), (3, 5, 13), (4, 2, 14), (5, 5, 15)]
    batches = list(dm.train_dataloader())
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5]]  # unshuffled: index = row of δ
    assert [b["index"].tolist() for b in dm.train_dataloader()] == [[0, 1, 2, 3], [4, 5]]  # every epoch the same
    default = LabelSeedDataModule(num_classes=3, per_class=1)
    assert [int(x["label"]) for x in items(default)] == [0, 1, 2]


def test_label_seed_bad_input_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"need classes, per_class >= 1 and batch_size >= 1 \(got \[0\], 0, 100\)"):
        LabelSeedDataModule(classes=[0], per_class=0)
    with pytest.raises(ValueError, match="class labels must be >= 0, got -1"):
        LabelSeedDataModule(classes=[-1, 2])
    with pytest.raises(ValueError, match=r"^class_names has 2 names but the labels go up to 2; give one name per label "
                                         r"0\.\.2$"):
        LabelSeedDataModule(num_classes=3, class_names=["ant", "bee"])
    assert LabelSeedDataModule(classes=[1], class_names=["ant", "bee"]).class_names == ["ant", "bee"]


def test_fingerprint_names_the_sample_set() -> None:
    base = LabelSeedDataModule(num_classes=3, per_class=2, seed=0).fingerprint()
    assert LabelSeedDataModule(num_classes=3, per_class=2, seed=0, batch_size=1).fingerprint() == base  # batching
    assert LabelSeedDataModule(num_classes=3, per_class=2, seed=1).fingerprint() != base
    assert LabelSeedDataModule(classes=[0, 1, 3], per_class=2, seed=0).fingerprint() != base
    prompts = PromptSeedDataModule(["a cat"], per_prompt=2).fingerprint()
    assert PromptSeedDataModule(["a dog"], per_prompt=2).fingerprint() != prompts


def test_prompt_seed_samples_repeat_the_prompts_per_seed() -> None:
    dm = PromptSeedDataModule(["a", "b"], per_prompt=2, seed=5)
    assert [(x["prompt"], int(x["seed"]), int(x["label"])) for x in items(dm)] == [
        ("a", 5, -1), ("b", 6, -1), ("a", 7, -1), ("b", 8, -1)]
    with pytest.raises(ValueError, match="need prompts, per_prompt >= 1"):
        PromptSeedDataModule([])


# ----- reference images -----------------------------------------------------------------------------------------


def test_digit_references_carry_their_labels_names_and_seeds() -> None:
    dm = ReferenceImageDataModule(source="digits", num_samples=3, image_size=8, seed=4)
    images, labels = digits_test_tensors(8)
    torch.testing.assert_close(dm.dataset.images, images[:3])  # the first test digits, in [-1, 1]
    assert dm.dataset.images.min() >= -1 and dm.dataset.images.max() <= 1
    first = dm.dataset[0]
    assert int(first["label"]) == int(labels[0]) and int(first["seed"]) == 4
    assert first["prompt"] == f"a thick digit {DIGIT_NAMES[int(labels[0])]}"  # the default template
    rgb = ReferenceImageDataModule(source="digits", num_samples=2, image_size=8, channels=3)
    assert rgb.dataset.images.shape == (2, 3, 8, 8)
    torch.testing.assert_close(rgb.dataset.images[:, 1], images[:2, 0])
    cycled = ReferenceImageDataModule(source="digits", num_samples=3, image_size=8, prompts=["x", "y"])
    assert cycled.dataset.prompts == ["x", "y", "x"]


def write_png(path: Path, array: torch.Tensor) -> None:
    """(H, W) or (H, W, 3) uint8 tensor -> PNG."""
    Image.fromarray(array.numpy()).save(path)


def test_folder_references_are_read_sorted_and_resized_with_a_warning(tmp_path: Path) -> None:
    write_png(tmp_path / "b.png", torch.full((8, 8), 255, dtype=torch.uint8))
    write_png(tmp_path / "a.png", torch.zeros(8, 8, dtype=torch.uint8))
    write_png(tmp_path / "c.png", torch.full((12, 12), 255, dtype=torch.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="reference c.png is 12×12: resized to 8×8"):
        dm = ReferenceImageDataModule(source=str(tmp_path), num_samples=None, image_size=8, prompts=["p"])
    images = dm.dataset.images
    assert images.shape == (3, 1, 8, 8)
    assert images[0].max() == -1 and images[1].min() == 1 and images[2].min() == 1  # a (black), b, c (white)
    assert dm.dataset.labels == [-1, -1, -1]
    two = ReferenceImageDataModule(source=str(tmp_path), num_samples=2, image_size=8)
    assert two.num_samples == 2


def test_reference_bad_input_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels=2 must be 1 or 3"):
        ReferenceImageDataModule(channels=2)
    with pytest.raises(ValueError, match="num_samples=0 and batch_size=20 must be >= 1"):
        ReferenceImageDataModule(num_samples=0)
    with pytest.raises(FileNotFoundError, match="neither 'digits', 'skimage:<names>' nor an existing folder"):
        ReferenceImageDataModule(source=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .png/.jpg/.jpeg/.bmp/.webp images"):
        ReferenceImageDataModule(source=str(tmp_path / "empty"))
    (tmp_path / "mixed").mkdir()
    write_png(tmp_path / "mixed" / "a.png", torch.zeros(8, 8, dtype=torch.uint8))
    write_png(tmp_path / "mixed" / "b.png", torch.zeros(6, 6, dtype=torch.uint8))
    with pytest.raises(ValueError, match="differ in size; set data.init_args.image_size to resize"):
        ReferenceImageDataModule(source=str(tmp_path / "mixed"), num_samples=None, image_size=None)


def test_read_image_file_reads_exact_values(tmp_path: Path) -> None:
    pixels = torch.tensor([[0, 51], [204, 255]], dtype=torch.uint8)
    write_png(tmp_path / "grey.png", pixels)
    torch.testing.assert_close(read_image_file(tmp_path / "grey.png", channels=1), pixels[None].float() / 255)
    rgb = torch.stack([pixels, 255 - pixels, torch.zeros_like(pixels)], dim=-1)  # (H, W, 3)
    write_png(tmp_path / "rgb.png", rgb)
    torch.testing.assert_close(read_image_file(tmp_path / "rgb.png", channels=3), rgb.permute(2, 0, 1).float() / 255)
    assert read_image_file(tmp_path / "grey.png", channels=3).shape == (3, 2, 2)  # grey file, RGB asked
    assert read_image_file(tmp_path / "rgb.png", channels=1, size=4).shape == (1, 4, 4)
    with pytest.raises(FileNotFoundError, match="image file '.*missing.png' does not exist"):
        read_image_file(tmp_path / "missing.png", channels=1)


# ----- reward conditions ---------------------------------------------------------------------------------------


def test_reward_conditions_cycle_over_steps_with_fresh_seeds() -> None:
    dm = RewardPromptDataModule(classes=[3, 7, 9], samples_per_step=4, batch_size=2, seed=100)
    assert dm.num_conditions == 3 and len(dm.dataset) == 4
    positions, seeds = dm.conditions(epoch=0, index=torch.arange(4))
    assert positions.tolist() == [0, 1, 2, 0] and seeds.tolist() == [100, 101, 102, 103]
    positions, seeds = dm.conditions(epoch=2, index=torch.tensor([1, 3]))
    assert positions.tolist() == [0, 2] and seeds.tolist() == [109, 111]  # global sample 2·4 + j
    assert RewardPromptDataModule(num_classes=4, samples_per_step=2, batch_size=2).classes == [0, 1, 2, 3]


def test_reward_prompts_and_class_files(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("a cat\n\n  a dog  \n")
    dm = RewardPromptDataModule(prompts=str(tmp_path / "prompts.txt"), samples_per_step=2, batch_size=1)
    assert dm.prompts == ["a cat", "a dog"] and dm.classes is None
    (tmp_path / "classes.txt").write_text("4  # four\n2\n")
    assert RewardPromptDataModule(classes=str(tmp_path / "classes.txt"), samples_per_step=2,
                                  batch_size=2).classes == [4, 2]
    (tmp_path / "bad.txt").write_text("four\n")
    with pytest.raises(ValueError, match="must hold one integer label a line"):
        RewardPromptDataModule(classes=str(tmp_path / "bad.txt"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="prompt file .*empty.txt is empty"):
        RewardPromptDataModule(prompts=str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match=r"classes=\[\] must be a non-empty list"):
        RewardPromptDataModule(classes=[])
    with pytest.raises(ValueError, match="samples_per_step=0 and batch_size=2 must be >= 1"):
        RewardPromptDataModule(samples_per_step=0, batch_size=2)


def test_block_sampler_gives_each_rank_a_contiguous_block() -> None:
    dataset = RewardPromptDataModule(samples_per_step=6, batch_size=3).dataset
    assert [list(BlockSampler(dataset, num_replicas=2, rank=r)) for r in (0, 1)] == [[0, 1, 2], [3, 4, 5]]
    assert len(BlockSampler(dataset, num_replicas=3, rank=2)) == 2
    with pytest.raises(ValueError, match="samples_per_step=6 is not divisible by the 4 devices"):
        BlockSampler(dataset, num_replicas=4, rank=0)
    loader = RewardPromptDataModule(samples_per_step=4, batch_size=2).train_dataloader()  # no trainer: one rank
    assert [b["index"].tolist() for b in loader] == [[0, 1], [2, 3]]
