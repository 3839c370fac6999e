"""Writes are whole or absent: a failure mid-write leaves the old file and no temporary behind."""

import pickle

import pytest
import torch

from slimbench.core.atomic import atomic_path, atomic_write_text
from slimbench.pruning.checkpoint import atomic_save


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_checkpoint_interrupted_by_an_unpicklable_object(tmp_path):
    target = tmp_path / "model.pt"
    atomic_save({"w": torch.ones(2)}, target)
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        atomic_save({"w": torch.zeros(2), "bad": lambda: None}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


# ---------------------------------------------------------------- what is at the path is respected

import os  # noqa: E402
import stat  # noqa: E402

from slimbench.core.atomic import check_destination, write_text_or_rescue  # noqa: E402
from slimbench.core.errors import SlimbenchRuntimeError, SlimbenchValueError  # noqa: E402


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _full_device(tmp_path):
    """A char device with /dev/full's numbers in tmp_path (as root), so a broken writer replaces
    only this node, never the system's /dev/full; /dev/full itself otherwise."""
    if os.geteuid() != 0:
        return "/dev/full"
    node = tmp_path / "full"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    return str(node)


def test_new_file_gets_the_umask_mode_and_existing_keeps_its_own(tmp_path, umask_022):
    new = atomic_write_text(tmp_path / "new.txt", "a")
    assert stat.S_IMODE(new.stat().st_mode) == 0o644
    shared = tmp_path / "shared.txt"
    shared.write_text("old")
    shared.chmod(0o644)
    atomic_write_text(shared, "new")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644 and shared.read_text() == "new"
    private = tmp_path / "private.txt"
    private.write_text("old")
    private.chmod(0o600)
    atomic_save({"w": torch.ones(1)}, private)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_symlink_is_written_through_and_stays_a_link(tmp_path):
    target = tmp_path / "real.md"
    target.write_text("old")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.md", "real.md"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device node needs root")
def test_device_node_is_written_into_not_replaced(tmp_path):
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    before = node.stat()
    atomic_write_text(node, "discarded")
    atomic_save({"w": torch.ones(2)}, node)
    after = node.stat()
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_mode == before.st_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_fifo_is_written_into(tmp_path):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    atomic_write_text(fifo, "through the pipe")
    reader.join(timeout=30)
    assert got == ["through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_dash_is_stdout_not_a_file_named_dash(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    atomic_write_text("-", "to stdout\n")
    assert capsys.readouterr().out == "to stdout\n"
    assert list(tmp_path.iterdir()) == []


def test_full_device_reports_no_space_instead_of_success(tmp_path):
    full = _full_device(tmp_path)
    with pytest.raises(SlimbenchRuntimeError, match="no space left on device"):
        atomic_write_text(full, "x" * 10_000)
    with pytest.raises(SlimbenchRuntimeError, match="no space left on device"):
        atomic_save({"w": torch.ones(1000)}, full)
    assert stat.S_ISCHR(os.stat(full).st_mode)


def test_torch_enforce_fail_on_a_full_disk_becomes_a_clear_error(tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    target = tmp_path / "model.pt"
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SlimbenchRuntimeError, match="no space left on device"):
        atomic_save({"w": torch.ones(2)}, target)
    assert list(tmp_path.iterdir()) == []


def test_destinations_are_checked_before_the_work(tmp_path):
    with pytest.raises(SlimbenchValueError, match="is a folder"):
        check_destination(tmp_path, option="--output")
    with pytest.raises(SlimbenchValueError, match="does not exist"):
        check_destination(tmp_path / "absent" / "r.md", option="--output")
    assert check_destination(tmp_path / "made" / "r.pt", create_parent=True).parent.is_dir()
    assert str(check_destination("-")) == "-"
    if os.geteuid() != 0:  # root writes anywhere; the permission checks only bite for other users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SlimbenchValueError, match="not writable"):
            check_destination(locked / "r.md")


def test_results_that_cannot_be_written_are_rescued(tmp_path):
    full = _full_device(tmp_path)
    with pytest.raises(SlimbenchRuntimeError, match="saved to") as caught:
        write_text_or_rescue(full, "| model | acc |\n", what="report")
    rescued = str(caught.value).rsplit("saved to ", 1)[1].split(" instead")[0]
    assert open(rescued).read() == "| model | acc |\n"
    os.unlink(rescued)
