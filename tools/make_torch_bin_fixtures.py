#!/usr/bin/env python3
"""Writes the pytorch_model.bin test fixtures of tests/fixtures/torch-bin/ from the shared fixture
switch-tiny-4-bin/pytorch_model.bin (made by torch.save in torch 1.13.1), without torch: the
archives are written the way torch.save writes them (a zip of <archive>/data.pkl, pickle protocol
2, tensors as torch._utils._rebuild_tensor_v2 over persistent storages <archive>/data/<key>).

  sharded/   the same 61 tensors in two shards + pytorch_model.bin.index.json (+ config.json)
  views.bin  tensors that are views into one shared storage (offsets, a transpose, the whole)
  evil.bin   a state dict whose second value is os.system("touch /tmp/distill-pickle-ran")
  tiny.bin   one 2x2 float tensor (the fuzzer's seed)

Usage: tools/make_torch_bin_fixtures.py SHARED_FIXTURES_DIR OUT_DIR
"""
import collections
import io
import json
import os
import pickle
import shutil
import struct
import sys
import types
import zipfile

# Stand-ins for the torch globals a state dict's pickle names: pickle writes them as GLOBALs by
# their module and name, which is all a reader sees.
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils
torch._utils = torch_utils


def _rebuild_tensor_v2(*args):
    raise RuntimeError("never called")


torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
_rebuild_tensor_v2.__module__ = "torch._utils"
DTYPES = {"FloatStorage": 4, "LongStorage": 8}
for name in DTYPES:
    cls = type(name, (), {})
    cls.__module__ = "torch"
    setattr(torch, name, cls)


class Storage:
    def __init__(self, key, kind, data):
        self.key, self.kind, self.data = key, kind, data


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, protocol):
        return (_rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", getattr(torch, obj.kind), obj.key, "cpu", len(obj.data) // DTYPES[obj.kind])
        return None


def write_bin(path, state, archive="archive"):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(state)
    storages = {}
    for value in state.values():
        if isinstance(value, Tensor):
            storages[value.storage.key] = value.storage
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(archive + "/data.pkl", buf.getvalue())
        for key, s in storages.items():
            z.writestr(archive + "/data/" + key, s.data)
        z.writestr(archive + "/version", "3\n")


def read_bin(path):
    """name -> (kind, bytes, offset, size, stride) of a torch.save state dict."""
    with zipfile.ZipFile(path) as z:
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")]

        class Reader(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) == ("collections", "OrderedDict"):
                    return collections.OrderedDict
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return lambda s, off, size, stride, *rest: (s[0], s[1], off, size, stride)
                if module == "torch" and name.endswith("Storage"):
                    return name
                raise pickle.UnpicklingError(f"{module}.{name}")

            def persistent_load(self, pid):
                return (pid[1], z.read(prefix + "data/" + pid[2]))

        return Reader(io.BytesIO(z.read(pkl))).load()


def main():
    shared, out = sys.argv[1], sys.argv[2]
    src = os.path.join(shared, "switch-tiny-4-bin")
    tensors = read_bin(os.path.join(src, "pytorch_model.bin"))
    os.makedirs(out, exist_ok=True)

    # Two shards and their index, beside the model's other files.
    sharded = os.path.join(out, "sharded")
    os.makedirs(sharded, exist_ok=True)
    for f in os.listdir(src):
        if f != "pytorch_model.bin":
            shutil.copy(os.path.join(src, f), sharded)
    names = list(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves):
        file = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        state = collections.OrderedDict()
        for j, n in enumerate(part):
            kind, data, off, size, stride = tensors[n]
            state[n] = Tensor(Storage(str(j), kind, data), off, size, stride)
            weight_map[n] = file
        write_bin(os.path.join(sharded, file), state, archive=file[:-4])
    total = sum(len(t[1]) for t in tensors.values())
    with open(os.path.join(sharded, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    # Views into one storage: q.weight [64, 64] whole, rows 10..19, and rows 0..3 transposed.
    kind, data, _, size, _ = tensors["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert size == (64, 64)
    s = Storage("0", kind, data)
    write_bin(os.path.join(out, "views.bin"), collections.OrderedDict(
        [("whole", Tensor(s, 0, [64, 64], [64, 1])),
         ("rows_10_to_19", Tensor(s, 640, [10, 64], [64, 1])),
         ("rows_0_to_3_transposed", Tensor(s, 0, [64, 4], [1, 64])),
         ("column_5", Tensor(s, 5, [64], [64]))]))

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/distill-pickle-ran",))

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(collections.OrderedDict(
        [("shared.weight", Tensor(Storage("0", "FloatStorage", struct.pack("<4f", 1, 2, 3, 4)), 0, [2, 2], [2, 1])),
         ("payload", Evil())]))
    with zipfile.ZipFile(os.path.join(out, "evil.bin"), "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
        z.writestr("archive/version", "3\n")

    write_bin(os.path.join(out, "tiny.bin"), collections.OrderedDict(
        [("w", Tensor(Storage("0", "FloatStorage", struct.pack("<4f", 1, 2, 3, 4)), 0, [2, 2], [2, 1]))]))


if __name__ == "__main__":
    main()
