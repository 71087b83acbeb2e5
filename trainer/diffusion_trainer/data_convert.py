"""Convert captioned images to a raw MDS dataset (`image` bytes + `caption`).

Sources:
- an image folder: each image with a caption in `<stem>.txt` beside it, or a `metadata.jsonl`
  (Hugging Face imagefolder style: {"file_name": ..., "text": ...} per line);
- parquet files with an image column (bytes, or a struct with `bytes`) and a caption column
  (needs pyarrow).
Image bytes are stored as they are (no re-encoding); the loader decodes and resizes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streaming import MDSWriter

from diffusion_trainer.data import RAW_COLUMNS
from diffusion_trainer.progress_bar import progress_bar

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
METADATA_FILE = "metadata.jsonl"


class ConvertError(ValueError):
    """The source cannot be converted; the message says why."""


def read_metadata_captions(folder: Path) -> dict[str, str]:
    path = folder / METADATA_FILE
    if not path.is_file():
        return {}
    captions = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            captions[record["file_name"]] = record.get("text", record.get("caption", ""))
    return captions


def iterate_image_folder(folder: Path) -> Iterator[tuple[bytes, str]]:
    captions = read_metadata_captions(folder)
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ConvertError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    for image in images:
        relative = image.relative_to(folder).as_posix()
        sidecar = image.with_suffix(".txt")
        if relative in captions:
            caption = captions[relative]
        elif sidecar.is_file():
            caption = sidecar.read_text().strip()
        else:
            raise ConvertError(f"{image} has no caption ({sidecar.name} or {METADATA_FILE})")
        yield image.read_bytes(), caption


def image_cell_bytes(cell: Any) -> bytes:
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    if not isinstance(cell, bytes | bytearray):
        raise ConvertError("parquet image column must hold bytes or {bytes: ...} structs")
    return bytes(cell)


def iterate_parquet(
    files: list[Path], image_column: str, caption_column: str
) -> Iterator[tuple[bytes, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ConvertError("parquet conversion needs pyarrow (pip install pyarrow)") from error
    for file in files:
        table = pq.read_table(file, columns=[image_column, caption_column])
        for row in table.to_pylist():
            yield image_cell_bytes(row[image_column]), str(row[caption_column] or "")


def write_raw_dataset(samples: Iterator[tuple[bytes, str]], out: str) -> int:
    num_samples = 0
    with (
        MDSWriter(out=out, columns=RAW_COLUMNS, size_limit=1 << 26) as writer,
        progress_bar("converting", unit=" images") as bar,
    ):
        for image, caption in samples:
            writer.write({"image": image, "caption": caption})
            num_samples += 1
            bar.update()
    return num_samples


def convert_image_folder(folder: Path, out: str) -> int:
    return write_raw_dataset(iterate_image_folder(folder), out)


def convert_parquet(
    files: list[Path], out: str, image_column: str = "image", caption_column: str = "caption"
) -> int:
    return write_raw_dataset(iterate_parquet(files, image_column, caption_column), out)
