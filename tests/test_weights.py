"""sam.weights without a network: the table of known models, the key remap, shapes, local files, errors."""

import gc
import json
import logging
import os
import re
import shutil
import time

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sam import CONFIGS, build_sam
from sam.build import TinyViTConfig, config_from_state_dict, config_from_transformers
from sam.remap import SAM_KEYS
from sam.weights import KNOWN_MODELS, WeightsError, build_empty, load_model, read_state_dict, resolve
from tests.helpers.hub import SLIM_HF, TINY_HF, VIT_B_HF, write_meta
from tests.helpers.reference import TINY, meta_sam

# What checkpoints.md and the model pages give: name -> (repo id, files).
EXPECTED = {
    "sam-vit-base": ("facebook/sam-vit-base", ("config.json", "model.safetensors")),
    "sam-vit-large": ("facebook/sam-vit-large", ("config.json", "model.safetensors")),
    "sam-vit-huge": ("facebook/sam-vit-huge", ("config.json", "model.safetensors")),
    "slimsam-50": ("Zigeng/SlimSAM-uniform-50", ("config.json", "model.safetensors")),
    "slimsam-77": ("Zigeng/SlimSAM-uniform-77", ("config.json", "model.safetensors")),
    "mobile-sam": ("dhkim2810/MobileSAM", ("mobile_sam.pt",)),
    "mobile_sam.pt": ("dhkim2810/MobileSAM", ("mobile_sam.pt",)),
    "sam_b.pt": ("ybelkada/segment-anything", ("checkpoints/sam_vit_b_01ec64.pth",)),
    "sam_l.pt": ("ybelkada/segment-anything", ("checkpoints/sam_vit_l_0b3195.pth",)),
    "sam_h.pt": ("ybelkada/segment-anything", ("checkpoints/sam_vit_h_4b8939.pth",)),
    # SAM 2.1 and 2.0 (Meta's sam2.build_sam.HF_MODEL_ID_TO_FILENAMES), and Ultralytics' names for them
    "sam2.1-hiera-tiny": ("facebook/sam2.1-hiera-tiny", ("sam2.1_hiera_tiny.pt",)),
    "sam2.1-hiera-small": ("facebook/sam2.1-hiera-small", ("sam2.1_hiera_small.pt",)),
    "sam2.1-hiera-base-plus": ("facebook/sam2.1-hiera-base-plus", ("sam2.1_hiera_base_plus.pt",)),
    "sam2.1-hiera-large": ("facebook/sam2.1-hiera-large", ("sam2.1_hiera_large.pt",)),
    "sam2-hiera-tiny": ("facebook/sam2-hiera-tiny", ("sam2_hiera_tiny.pt",)),
    "sam2-hiera-small": ("facebook/sam2-hiera-small", ("sam2_hiera_small.pt",)),
    "sam2-hiera-base-plus": ("facebook/sam2-hiera-base-plus", ("sam2_hiera_base_plus.pt",)),
    "sam2-hiera-large": ("facebook/sam2-hiera-large", ("sam2_hiera_large.pt",)),
    "sam2.1_t.pt": ("facebook/sam2.1-hiera-tiny", ("sam2.1_hiera_tiny.pt",)),
    "sam2.1_s.pt": ("facebook/sam2.1-hiera-small", ("sam2.1_hiera_small.pt",)),
    "sam2.1_b.pt": ("facebook/sam2.1-hiera-base-plus", ("sam2.1_hiera_base_plus.pt",)),
    "sam2.1_l.pt": ("facebook/sam2.1-hiera-large", ("sam2.1_hiera_large.pt",)),
    "sam2_t.pt": ("facebook/sam2-hiera-tiny", ("sam2_hiera_tiny.pt",)),
    "sam2_s.pt": ("facebook/sam2-hiera-small", ("sam2_hiera_small.pt",)),
    "sam2_b.pt": ("facebook/sam2-hiera-base-plus", ("sam2_hiera_base_plus.pt",)),
    "sam2_l.pt": ("facebook/sam2-hiera-large", ("sam2_hiera_large.pt",)),
}


def test_known_names_resolve_to_their_hub_files():
    assert set(KNOWN_MODELS) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        assert resolve(name) == expected, name


def test_sam2_names_match_metas_own_hub_table():
    """The repo and file of each SAM 2 name are those Meta's sam2 package downloads for that repo."""
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    sam2 = {n: k for n, k in KNOWN_MODELS.items() if k.repo_id.startswith("facebook/sam2")}
    assert {k.repo_id for k in sam2.values()} == set(HF_MODEL_ID_TO_FILENAMES)
    for name, known in sam2.items():
        assert known.files == (HF_MODEL_ID_TO_FILENAMES[known.repo_id][1],), name
        assert known.format == "meta" and known.config.startswith("hiera_"), name


def test_repo_ids_and_files_in_repos_resolve():
    assert resolve("facebook/sam-vit-base") == ("facebook/sam-vit-base", ("config.json", "model.safetensors"))
    assert resolve("ybelkada/segment-anything/checkpoints/sam_vit_b_01ec64.pth") == (
        "ybelkada/segment-anything",
        ("checkpoints/sam_vit_b_01ec64.pth",),
    )


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(WeightsError) as err:
        load_model("sam-vit-bse")
    message = str(err.value)
    assert "Did you mean 'sam-vit-base'" in message
    assert all(name in message for name in KNOWN_MODELS)
    with pytest.raises(WeightsError, match="not a known model"):
        load_model("./no/such/file.pth")


def hf_keys(config: dict) -> list[str]:
    from transformers import SamConfig as HFSamConfig
    from transformers import SamModel

    with torch.device("meta"):
        return list(SamModel(HFSamConfig(**config)).state_dict())


@pytest.mark.parametrize("config", [VIT_B_HF, SLIM_HF, TINY_HF], ids=["vit_b", "slim", "tiny"])
def test_remap_maps_every_key_both_ways(config):
    from transformers import SamConfig as HFSamConfig

    keys = hf_keys(config)
    ours = set(build_empty(config_from_transformers(HFSamConfig(**config).to_dict())).state_dict())
    mapped = {k: SAM_KEYS.meta_key(k) for k in keys}
    assert None not in mapped.values(), [k for k, v in mapped.items() if v is None]
    assert set(mapped.values()) == ours  # onto our model's keys, nothing left over
    # one-to-one, except transformers' second copy of the positional matrix
    assert len(keys) == len(ours) + len(SAM_KEYS.aliases)
    for key in ours:
        back = SAM_KEYS.transformers_key(key)
        assert back in keys and SAM_KEYS.meta_key(back) == key
    for key in keys:
        if key not in SAM_KEYS.aliases:
            assert SAM_KEYS.transformers_key(mapped[key]) == key


def test_remap_rule_for_every_numbered_part():
    to_meta = SAM_KEYS.meta_key
    assert to_meta("vision_encoder.layers.11.layer_norm2.weight") == "image_encoder.blocks.11.norm2.weight"
    assert to_meta("mask_decoder.output_hypernetworks_mlps.3.proj_out.bias") == (
        "mask_decoder.output_hypernetworks_mlps.3.layers.2.bias"
    )
    layer = "mask_decoder.transformer.layers.1."
    assert to_meta(layer + "layer_norm4.bias") == layer + "norm4.bias"
    assert to_meta("vision_encoder.something_new.weight") is None


def test_transformers_shapes_fit_the_config_read_from_config_json():
    """Every tensor of a (meta-device) SamModel lands on a key of the same shape in our model."""
    from transformers import SamConfig as HFSamConfig
    from transformers import SamModel

    for config in (VIT_B_HF, SLIM_HF):
        with torch.device("meta"):
            hf = SamModel(HFSamConfig(**config))
        sd = SAM_KEYS.to_meta(hf.state_dict())
        ours = build_empty(config_from_transformers(hf.config.to_dict())).state_dict()
        assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in ours.items()}


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_config_from_meta_shapes(name):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        sd = sam_model_registry[name]().state_dict()
    assert config_from_state_dict(sd) == CONFIGS[name]


def test_config_from_tiny_and_tinyvit_shapes():
    assert config_from_state_dict(meta_sam(TINY).state_dict()) == TINY
    with torch.device("meta"):
        sd = build_sam("tiny_vit").state_dict()
    assert isinstance(config_from_state_dict(sd).encoder, TinyViTConfig)


@pytest.mark.parametrize("config", [TINY, CONFIGS["tiny_vit"]], ids=["vit", "tiny_vit"])
def test_build_empty_skips_only_parameter_init(config):
    empty, built = build_empty(config), build_sam(config)
    assert {k: v.shape for k, v in empty.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    persistent = set(built.state_dict())
    for name, buffer in built.named_buffers():  # buffers that no checkpoint holds must be built as usual
        if name not in persistent:
            assert torch.equal(dict(empty.named_buffers())[name], buffer), name
    assert torch.nn.Linear(3, 3).weight.abs().sum() > 0  # the skipping stops with the build


def test_local_pth_loads_exactly(tmp_path):
    path = write_meta(tmp_path / "tiny.pth", TINY, seed=3)
    model = load_model(str(path))
    saved = torch.load(path, weights_only=True)
    ours = model.state_dict()
    assert set(saved) == set(ours)
    assert all(torch.equal(ours[k], saved[k]) for k in ours)
    assert model.weights_source == str(path) and model.config == TINY and not model.training
    # some exports carry the normalisation constants too: they are dropped
    torch.save({**saved, "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)}, tmp_path / "px.pth")
    assert torch.equal(load_model(str(tmp_path / "px.pth")).pixel_std, model.pixel_std)


def test_local_safetensors_and_folder(tmp_path, checkpoints):
    sd = {k: v for k, v in torch.load(write_meta(tmp_path / "a.pth", TINY, 4), weights_only=True).items()}
    save_file({k: v for k, v in sd.items() if not k.startswith("pixel_")}, tmp_path / "a.safetensors")
    model = load_model(str(tmp_path / "a.safetensors"))
    assert torch.equal(model.image_encoder.pos_embed, sd["image_encoder.pos_embed"])
    folder = checkpoints.transformers("tiny")
    from_folder = load_model(str(folder))
    from_file = load_model(str(folder / "model.safetensors"))  # no config.json: shapes tell the architecture
    assert from_folder.config == from_file.config
    assert all(torch.equal(a, b) for a, b in zip(from_folder.state_dict().values(), from_file.state_dict().values()))
    (tmp_path / "only_pth").mkdir()
    (tmp_path / "only_pth" / "a.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match="needs config.json and model.safetensors; it holds a.pth"):
        load_model(str(tmp_path / "only_pth"))


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
@pytest.mark.parametrize("name", ["tiny", "vit_b"])
def test_bf16_load_releases_the_checkpoint_file(checkpoints, name):
    """The fp32 weights that bf16 replaces do not stay resident through the file's memory map."""
    folder = checkpoints.transformers(name)

    def mapped() -> bool:
        return any(str(folder) in line for line in open("/proc/self/maps"))

    fp32 = load_model(str(folder))
    assert mapped()  # fp32 weights are the mapped file itself: nothing copied
    bf16 = load_model(str(folder), dtype="bfloat16")
    del fp32
    gc.collect()
    assert not mapped()
    ref = load_model(str(folder)).set_precision(torch.bfloat16).state_dict()
    ours = bf16.state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert bf16.precision == "bfloat16" and ours["image_encoder.patch_embed.proj.weight"].dtype == torch.bfloat16


def test_key_errors_name_the_keys(tmp_path):
    sd = torch.load(write_meta(tmp_path / "a.pth", TINY), weights_only=True)
    del sd["image_encoder.neck.0.weight"], sd["mask_decoder.iou_token.weight"]
    sd["image_encoder.extra.weight"] = torch.zeros(1)
    sd["image_encoder.blocks.0.mlp.lin2.bias"] = torch.zeros(7)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(WeightsError) as err:
        load_model(str(tmp_path / "broken.pth"))
    message = str(err.value)
    assert "missing keys: image_encoder.neck.0.weight, mask_decoder.iou_token.weight" in message
    assert "unexpected keys: image_encoder.extra.weight" in message
    assert "image_encoder.blocks.0.mlp.lin2.bias is (7,) in the file, (64,) in the model" in message


def test_one_mis_shaped_tensor_is_named(tmp_path):
    """The decoder's width is read from several tensors: one of them mis-shaped is the one named (it once set
    the width of the whole model, and the message blamed every tensor of the encoder's neck instead)."""
    sd = torch.load(write_meta(tmp_path / "a.pth", TINY), weights_only=True)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(WeightsError) as err:
        load_model(str(tmp_path / "b.pth"))
    message = str(err.value)
    assert message.endswith(
        "wrong shapes: mask_decoder.iou_token.weight is (1, 128) in the file, (1, 256) in the model"
    )
    assert "image_encoder.neck" not in message


def test_integer_weights_are_refused_naming_them(tmp_path):
    sd = torch.load(write_meta(tmp_path / "a.pth", TINY), weights_only=True)
    sd["image_encoder.pos_embed"] = sd["image_encoder.pos_embed"].long()
    torch.save(sd, tmp_path / "int.pth")
    with pytest.raises(WeightsError, match=r"wrong types: image_encoder\.pos_embed is int64 in the file, float32 in"):
        load_model(str(tmp_path / "int.pth"))


def with_config(folder, tmp_path, **vision) -> str:
    """A copy of a transformers checkpoint folder whose config.json's vision_config has the given values."""
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["vision_config"].update(vision)
    (copy / "config.json").write_text(json.dumps(config))
    return str(copy)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("num_hidden_layers", 100000, "allowed 1..32"),
        ("hidden_size", -5, "allowed 1..1280"),
        ("num_attention_heads", "12", "allowed 1..16"),
        ("window_size", 1 << 20, "allowed 1..14"),
    ],
)
def test_config_json_outside_the_family_is_refused_before_building(
    tmp_path, checkpoints, monkeypatch, field, value, allowed
):
    """Sizes are checked against the published family's before anything is built (100,000 blocks used to
    take minutes and 10 GB before failing; a negative width said "negative dimension")."""
    import sam.weights

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(sam.weights, "build_empty", no_build)
    path = with_config(checkpoints.transformers("tiny"), tmp_path, **{field: value})
    start = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        load_model(path)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert message.startswith(f"config.json of {path} describes a model outside the sizes of the published SAM")
    assert f"(vision_config.{field}) is {value!r}; {allowed}" in message


def test_many_missing_keys_are_counted(tmp_path):
    sd = torch.load(write_meta(tmp_path / "a.pth", TINY), weights_only=True)
    sd = {k: v for k, v in sd.items() if not k.startswith("mask_decoder.transformer.")}
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(WeightsError, match=r"missing keys: mask_decoder\.transformer\..*\(\d+ in all\)"):
        load_model(str(tmp_path / "b.pth"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_local_file_names_the_file(tmp_path, suffix):
    sd = {k: v for k, v in meta_sam(TINY).state_dict().items()}
    path = tmp_path / f"model{suffix}"
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(WeightsError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "truncated or corrupted" in str(err.value)
    assert "force_download=True" in str(err.value)


def test_pickles_with_code_are_refused(tmp_path):
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "module.pt")
    with pytest.raises(WeightsError, match="only plain state dicts"):
        load_model(str(tmp_path / "module.pt"))


def test_random_weights_are_labelled(caplog):
    with caplog.at_level(logging.WARNING, logger="sam.weights"):
        model = load_model("random:sam-vit-base")
    assert model.weights_source == "random weights (vit_b)" and model.config == CONFIGS["vit_b"]
    assert any("RANDOM weights" in r.getMessage() for r in caplog.records)
    assert load_model("random:tiny_vit").weights_source == "random weights (tiny_vit)"
    with pytest.raises(WeightsError, match=re.escape("random:slimsam-50 is not available")):
        load_model("random:slimsam-50")


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("vit_t", "tiny_vit"),  # MobileSAM's TinyViT, as segment-anything and mobile_sam name it
        ("vit_b", "vit_b"),
        ("vit_l", "vit_l"),
        ("vit_h", "vit_h"),
        ("hiera_t", "hiera_tiny"),  # SAM 2's, as Meta's config files name them
        ("hiera_s", "hiera_small"),
        ("hiera_b+", "hiera_base_plus"),
        ("hiera_l", "hiera_large"),
        ("hiera_tiny", "hiera_tiny"),
        ("sam2.1_t.pt", "hiera_tiny"),
    ],
)
def test_random_takes_each_architectures_short_name(name, config):
    with torch.device("meta"):  # shapes only: ViT-H and Hiera-L at full size cost no memory
        model = load_model(f"random:{name}", device="meta")
    assert model.weights_source == f"random weights ({config})" and model.config.name == config


def test_random_unknown_name_lists_the_short_names():
    with pytest.raises(WeightsError) as err:
        load_model("random:vit_x")
    assert all(name in str(err.value) for name in ("vit_t", "vit_b", "hiera_t", "hiera_b+", "sam2.1-hiera-tiny"))
