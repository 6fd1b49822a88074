"""SAM 2 in transformers' layout: the rename table both ways, loading Sam2Model and Sam2VideoModel checkpoints,
parity with transformers' Sam2Model, and config.json files outside the family refused before building.

Both models get the same preprocessed pixels and the same prompts in model-input pixels; image embeddings
(every level), low-res mask logits, IoU scores and object-score logits agree to RTOL = 1e-4 relative.
transformers orders a box's corner points after the clicks where Meta puts them first: the two-way
transformer does not see the order of its prompt tokens, so the answers are the same.
"""

import json
import shutil

import pytest
import torch

from sam.build_sam2 import CONFIGS, TINY, build_sam2, config_from_transformers
from sam.modeling.sam2 import Sam2
from sam.remap import SAM2_KEYS
from sam.weights import WeightsError, load_model
from tests.helpers.hub import TINY_SAM2_HF, sam2_transformers_model, same_weights
from tests.helpers.reference import RTOL, rel_err, test_image
from tests.test_parity_transformers import CASES  # the same prompts as SAM's transformers parity


def hf_keys(video: bool, config: dict | None = None) -> dict[str, torch.Size]:
    from transformers import Sam2Config, Sam2Model, Sam2VideoConfig, Sam2VideoModel

    with torch.device("meta"):
        model = Sam2VideoModel(Sam2VideoConfig(**config)) if video else Sam2Model(Sam2Config(**config))
    return {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("size", ["tiny", "hiera_tiny", "hiera_large"])
def test_rename_table_maps_every_key_both_ways(size):
    """The config.json reads as our config; each of transformers' Sam2Model tensors lands on one of ours with
    its shape, nothing left over, and back; a Sam2VideoModel's extra tensors are the video entries dropped."""
    config, hf_config = (TINY, TINY_SAM2_HF) if size == "tiny" else (CONFIGS[size], None)
    if hf_config is None:  # transformers' defaults are Hiera-T; Hiera-L from its conversion values
        hf_config = {} if size == "hiera_tiny" else hiera_large_hf()
    from transformers import Sam2Config

    assert config_from_transformers(Sam2Config(**hf_config).to_dict()) == config
    with torch.device("meta"):
        ours = build_sam2(config).state_dict()
    hf = hf_keys(False, hf_config)
    fake = {k: torch.zeros(s, device="meta") for k, s in hf.items()}
    mapped = SAM2_KEYS.to_meta(fake)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ours.items()}
    back = SAM2_KEYS.to_transformers({k: torch.zeros(v.shape, device="meta") for k, v in ours.items()})
    assert {k: v.shape for k, v in back.items()} == hf
    video = set(hf_keys(True, hf_config)) - set(hf)
    assert video and all(SAM2_KEYS.is_video_key(k) for k in video)
    assert not any(SAM2_KEYS.is_video_key(k) for k in hf)


def hiera_large_hf() -> dict:
    backbone = dict(
        model_type="sam2_hiera_det_model",
        hidden_size=144,
        num_attention_heads=2,
        blocks_per_stage=[2, 6, 36, 4],
        embed_dim_per_stage=[144, 288, 576, 1152],
        num_attention_heads_per_stage=[2, 4, 8, 16],
        global_attention_blocks=[23, 33, 43],
        window_size_per_stage=[8, 4, 16, 8],
    )
    return dict(vision_config=dict(backbone_config=backbone, backbone_channel_list=[1152, 576, 288, 144]))


def test_round_trip_keeps_every_value():
    ours = build_sam2(TINY).state_dict()
    back = SAM2_KEYS.to_meta(SAM2_KEYS.to_transformers(ours))
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, checkpoints):
    """Sam2Model and Sam2VideoModel checkpoints (save_pretrained) holding one Meta checkpoint's image weights."""
    root = tmp_path_factory.mktemp("sam2-hf")
    meta = checkpoints.sam2_meta(seed=5)
    out = {"meta": meta}
    for video in (False, True):
        model = sam2_transformers_model(meta, video=video, seed=5)
        model.save_pretrained(root / ("video" if video else "image"))
        out["video" if video else "image"] = root / ("video" if video else "image")
    return out


def test_both_transformers_layouts_load_the_meta_weights(folders):
    by_meta = load_model(str(folders["meta"]))
    for name in ("image", "video"):
        model = load_model(str(folders[name]))
        assert isinstance(model, Sam2) and model.config == TINY and same_weights(model, by_meta), name
    assert json.loads((folders["video"] / "config.json").read_text())["model_type"] == "sam2_video"


def prompts(case: dict, s: int) -> tuple[dict, dict]:
    """A case -> (our Sam2.decode keywords, transformers' Sam2Model keywords), in model-input pixels."""
    ours, hf = {"multimask_output": case.get("multimask", True)}, {"multimask_output": case.get("multimask", True)}
    if "points" in case:
        points = torch.tensor(case["points"]) * s
        labels = torch.tensor(case["labels"], dtype=torch.int)
        ours |= {"point_coords": points, "point_labels": labels}
        hf |= {"input_points": points[None], "input_labels": labels[None]}
    if "boxes" in case:
        boxes = torch.tensor(case["boxes"]) * s
        ours["boxes"] = boxes
        hf["input_boxes"] = boxes[None]
    return ours, hf


@torch.no_grad()
def test_matches_transformers_sam2model(folders):
    from transformers import Sam2Model

    ours = load_model(str(folders["image"]))
    hf = Sam2Model.from_pretrained(folders["image"]).eval()
    image = torch.as_tensor(test_image(300, 200)).permute(2, 0, 1)[None].float()
    x = ours.preprocess(image)
    embedding, high_res = ours.encode(x)
    ref_levels = hf.get_image_embeddings(x)
    for a, b in zip((*high_res, embedding), ref_levels, strict=True):
        assert a.shape == b.shape and rel_err(a, b) < RTOL
    for name, case in CASES.items():
        kw, hf_kw = prompts(case, ours.img_size)
        low, iou, obj = ours.decode(embedding, high_res, **kw)
        out = hf(image_embeddings=ref_levels, **hf_kw)
        assert low.shape == out.pred_masks[0].shape, name
        for a, b in ((low, out.pred_masks[0]), (iou, out.iou_scores[0]), (obj, out.object_score_logits[0])):
            assert rel_err(a, b) < RTOL, name
    mask = low[:1, :1] if low.shape[1] == 1 else low[:1, 1:2]
    kw, hf_kw = prompts(CASES["one point"], ours.img_size)
    a = ours.decode(embedding, high_res, **kw, mask_input=mask)[0]
    assert rel_err(a, hf(image_embeddings=ref_levels, **hf_kw, input_masks=mask).pred_masks[0]) < RTOL


def edited(folder, tmp_path, edit) -> str:
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return str(copy)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("blocks_per_stage", [1, 2, 100000, 2], "each 1..36"),
        ("hidden_size", -5, "(backbone_config.hidden_size) is -5; allowed 8..144"),
        ("num_attention_heads", 64, "allowed 1..2"),
        ("global_attention_blocks", [4, 500], "must be blocks 0..7"),
    ],
)
def test_config_json_outside_the_family_is_refused_before_building(
    folders, tmp_path, monkeypatch, field, value, allowed
):
    import sam.weights

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(sam.weights, "build_empty", no_build)

    def edit(config: dict) -> None:
        backbone = config["vision_config"]["backbone_config"]
        backbone[field] = value
        per_stage = {"hidden_size": "embed_dim_per_stage", "num_attention_heads": "num_attention_heads_per_stage"}
        if field in per_stage:  # keep the per-stage values consistent, so the size is what is refused
            backbone[per_stage[field]] = [value * 2**i for i in range(4)]

    path = edited(folders["video"], tmp_path, edit)
    with pytest.raises(WeightsError) as err:
        load_model(path)
    message = str(err.value)
    assert "outside the sizes of the published SAM 2 models, refused before building it" in message
    assert allowed in message


def test_unknown_meta_layout_is_refused(tmp_path):
    """A Meta checkpoint does not say its heads or global blocks: only the published layouts are recognised."""
    sd = build_sam2(TINY).state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("image_encoder.trunk.blocks.7.")}
    torch.save({"model": sd}, tmp_path / "odd.pt")
    with pytest.raises(WeightsError, match=r"stages \(1, 2, 3, 1\) is none of the published SAM 2 layouts"):
        load_model(str(tmp_path / "odd.pt"))
