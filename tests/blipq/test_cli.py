"""`blipq caption` as a user runs it: a real subprocess over a folder with a broken file in it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from blipq.cli import app
from blipq.contract.options import CaptionOptions
from blipq.gateway.settings import GatewaySettings
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from blipq.inference.settings import InferenceSettings
from tests.helpers import drawing, encode, noise
from tests.server import free_port


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    (folder / "beach.jpg").write_bytes(encode(noise(640, 480, seed=1), "JPEG"))
    (folder / "logo.png").write_bytes(encode(drawing(300, 200, "white", "blue"), "PNG"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this file was cut off")
    (folder / "README.txt").write_text("not an image, and not picked up from a folder")
    (folder / "nested").mkdir()
    (folder / "nested" / "deep.webp").write_bytes(encode(drawing(100, 100, "red", "green"), "WEBP"))
    return folder


def _engine_caption(engine: CaptionEngine, path: Path, options: CaptionOptions | None = None) -> str:
    return engine.caption([decode_image(path.read_bytes())], options or CaptionOptions())[0]


def test_caption_a_folder_as_a_user_would(tiny_checkpoint: Path, photo_dir: Path, engine: CaptionEngine) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "blipq", "caption", "--model", str(tiny_checkpoint), str(photo_dir)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(row["path"]).name for row in rows] == ["beach.jpg", "broken.jpg", "logo.png"]
    by_name = {Path(row["path"]).name: row for row in rows}
    assert by_name["beach.jpg"]["caption"] == _engine_caption(engine, photo_dir / "beach.jpg")
    assert by_name["logo.png"]["caption"] == _engine_caption(engine, photo_dir / "logo.png")
    assert by_name["broken.jpg"]["caption"] is None
    assert by_name["broken.jpg"]["error"]["code"] == "invalid_image"
    assert "captioned 2 of 3 images; 1 failed" in result.stderr
    assert "broken.jpg" in result.stderr
    assert "Traceback" not in result.stderr


def test_csv_to_a_file_recursive_with_options(tiny_checkpoint: Path, photo_dir: Path, engine: CaptionEngine) -> None:
    out = photo_dir.parent / "captions.csv"
    result = CliRunner().invoke(
        app,
        ["caption", "--model", str(tiny_checkpoint), "--recursive", "--format", "csv", "--out", str(out),
         "--num-beams", "1", "--prompt", "", "--batch-size", "2", "--decoder", "transformers", str(photo_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [Path(row["path"]).name for row in rows] == ["beach.jpg", "broken.jpg", "logo.png", "deep.webp"]
    options = CaptionOptions(num_beams=1, prompt="")
    assert rows[3]["caption"] == _engine_caption(engine, photo_dir / "nested" / "deep.webp", options)
    assert rows[1]["error"].startswith("invalid_image: ")


def test_txt_output_with_a_url_and_a_missing_file(
    tiny_checkpoint: Path, photo_dir: Path, http_server: tuple[str, Path], engine: CaptionEngine
) -> None:
    base, root = http_server
    (root / "served.png").write_bytes((photo_dir / "logo.png").read_bytes())
    missing = photo_dir / "gone.jpg"
    result = CliRunner().invoke(
        app, ["caption", "--model", str(tiny_checkpoint), "-f", "txt", f"{base}/served.png", str(missing)]
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "\t" in line]
    assert lines[0] == f"{base}/served.png\t{_engine_caption(engine, photo_dir / 'logo.png')}"
    assert lines[1] == f"{missing}\tERROR unreadable_input: no such file: {missing}"


def test_bad_options_and_empty_inputs_fail_clearly(tiny_checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["caption", "--model", str(tiny_checkpoint), "--min-length", "30", str(tmp_path)])
    assert bad.exit_code == 2
    assert "min_length (30) must not exceed max_length (20)" in bad.stderr
    empty = runner.invoke(app, ["caption", "--model", str(tiny_checkpoint), str(tmp_path)])
    assert empty.exit_code == 1
    assert "no images found" in empty.stderr
    too_short = runner.invoke(
        app, ["caption", "--model", str(tiny_checkpoint), "--max-length", "4", "--min-length", "0", "x.jpg"]
    )
    assert too_short.exit_code == 2
    assert "leaves no room for a caption" in too_short.stderr


def test_test_model_command_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["test-model", str(tmp_path / "m"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    engine = CaptionEngine.load(tmp_path / "m", device="cpu")
    assert engine.caption([drawing(64, 64, "white", "black")], CaptionOptions())[0]
    unknown = CliRunner().invoke(app, ["test-model", str(tmp_path / "x"), "--size", "huge"])
    assert unknown.exit_code == 2


def test_nothing_captioned_exits_non_zero_and_says_so(tiny_checkpoint: Path, photo_dir: Path) -> None:
    missing = photo_dir / "gone.jpg"
    result = CliRunner().invoke(
        app, ["caption", "--model", str(tiny_checkpoint), str(missing), str(photo_dir / "broken.jpg")]
    )
    assert result.exit_code == 1
    assert "no image was captioned: all 2 failed" in result.stderr
    assert [json.loads(line)["error"]["code"] for line in result.stdout.splitlines()] == [
        "unreadable_input",
        "invalid_image",
    ]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("no/such/folder/captions.jsonl", "the folder {tmp}/no/such/folder does not exist"),
        (".", "is a directory; give a file name"),
    ],
)
def test_an_unwritable_output_is_refused_before_the_model_loads(tmp_path: Path, out: str, message: str) -> None:
    """The model named does not exist: the output path is checked first, so that is the error."""
    result = CliRunner().invoke(
        app, ["caption", "--model", str(tmp_path / "no-model"), "-o", str(tmp_path / out), str(tmp_path)]
    )
    assert result.exit_code == 2
    assert message.format(tmp=tmp_path) in " ".join(result.stderr.split())
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_dash_as_output_is_stdout(tiny_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "blipq", "caption", "--model", str(tiny_checkpoint), "-o", "-", "-f", "txt",
         str(photo_dir / "logo.png")],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{photo_dir / 'logo.png'}\t")
    assert list(tmp_path.iterdir()) == []


def _help(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300"}, terminal_width=300)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize(
    ("command", "settings"),
    [
        ("serve", ["host", "port", "store", "broker_url", "gateway_id", "model", "checkpoints_dir", "device", "dtype",
                   "vision_engine", "max_batch", "batch_wait_ms", "decoder"]),
        ("worker", ["broker_url", "model", "checkpoints_dir", "device", "dtype", "vision_engine", "max_batch",
                    "batch_wait_ms", "metrics_port", "decoder"]),
        ("caption", ["model", "checkpoints_dir", "device", "dtype", "max_batch", "vision_engine", "decoder"]),
        ("download", ["checkpoints_dir"]),
    ],
)  # fmt: skip
def test_help_shows_each_options_variable_and_default(command: str, settings: list[str]) -> None:
    text = _help(command)
    for name in settings:
        fields = GatewaySettings.model_fields | InferenceSettings.model_fields
        assert f"[env BLIPQ_{name.upper()}; default: {fields[name].get_default(call_default_factory=True)}]" in text


def test_caption_help_shows_the_generation_defaults() -> None:
    text = _help("caption")
    for option in (
        "Beam width; 1 = greedy. [default: 3]",
        "[default: 20]",
        "[default: 5]",
        "[default: 'a picture of ']",
    ):
        assert option in text


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["worker"], {}, "blipq worker consumes jobs from RabbitMQ: give --broker"),
    ],
)
def test_a_worker_without_a_broker_is_refused_in_one_line(argv: list[str], env: dict[str, str], message: str) -> None:
    result = CliRunner().invoke(app, [*argv, "--model", "no-such-model"], env=env)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_serve_without_the_inference_extra_says_what_to_install() -> None:
    """A gateway-only install has no torch: the embedded mode names the missing extra, in one line."""
    without_torch = "import sys; sys.modules['torch'] = None; from blipq.cli import app; app(['serve'])"
    result = subprocess.run([sys.executable, "-c", without_torch], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "needs torch: pip install 'blipq[inference]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_build_engine_without_cuda_says_what_is_missing_in_one_line(tiny_checkpoint: Path) -> None:
    result = CliRunner().invoke(app, ["build-engine", "--model", str(tiny_checkpoint)])
    assert result.exit_code == 1
    assert "no CUDA device: an engine is built on, and for, the GPU model that will run it" in result.output
    assert "Traceback" not in result.output


def test_build_engine_refuses_an_opt_batch_over_the_max() -> None:
    result = CliRunner().invoke(app, ["build-engine", "--max-batch", "8", "--opt-batch", "16"])
    assert result.exit_code == 2
    assert "--opt-batch must be between 1 and --max-batch (8), not 16" in " ".join(result.output.split())


def test_caption_with_vision_engine_tensorrt_on_cpu_stops_with_the_reason(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(encode(drawing(40, 30, "white", "red"), "PNG"))
    result = CliRunner().invoke(
        app, ["caption", str(image), "--model", str(tiny_checkpoint), "--device", "cpu", "--vision-engine", "tensorrt"]
    )
    assert result.exit_code != 0
    assert "--vision-engine tensorrt: no CUDA device" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_a_worker_health_check_needs_its_metrics_port() -> None:
    unset = CliRunner().invoke(app, ["healthcheck", "--worker"], env={"BLIPQ_METRICS_PORT": "0"})
    assert unset.exit_code == 2
    assert "BLIPQ_METRICS_PORT" in unset.output
    closed = CliRunner().invoke(app, ["healthcheck", "--worker"], env={"BLIPQ_METRICS_PORT": str(free_port())})
    assert closed.exit_code == 1
    assert "/metrics" in closed.output
