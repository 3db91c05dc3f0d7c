"""Check the extension inside a running AUTOMATIC1111 WebUI, through its HTTP API only.

    python tools/a1111_check.py --url http://127.0.0.1:7861 --model my-sd1-style \
        [--mismatched sdxl-style] [--lora some-lora] [--reference icon.png] [--refiner other-sd1.safetensors]

Start the WebUI with `--api` and this extension installed, and an SD1 checkpoint loaded (any
weights will do, random ones too: the checks compare images with each other, not with
expectations of content). Tiny images (64 px, 3 steps) keep it quick on a CPU. Prints PASS/FAIL
per check and exits non-zero when one fails. Needs numpy and Pillow; runs nothing of A1111.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

BASE = dict(prompt="a cat", negative_prompt="", steps=3, width=64, height=64, seed=1, sampler_name="Euler", cfg_scale=5)


class WebUI:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def post(self, path: str, body: dict, timeout: float = 900) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path) as r:
            return json.loads(r.read())

    def generate(self, style=None, path="/sdapi/v1/txt2img", **fields) -> tuple[int, dict]:
        body = {**BASE, **fields}
        if style is not None:
            body["alwayson_scripts"] = {"Style Components": {"args": style}}
        return self.post(path, body)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def first(reply: dict) -> np.ndarray:
    return pixels(reply["images"][0])


def infotexts(reply: dict) -> list[str]:
    return json.loads(reply["info"])["infotexts"]


def run(ui: WebUI, model: str, mismatched: str | None, lora: str | None, reference: str | None,
        refiner: str | None = None) -> dict:
    results: dict[str, bool] = {}

    def check(name: str, ok: bool, evidence: str = "") -> None:
        results[name] = bool(ok)
        print(("PASS " if ok else "FAIL ") + name + (f" | {evidence}" if evidence else ""), flush=True)

    style = {"enabled": True, "model": model, "components": [1.0, -0.5, 2.0], "strength": 1.0}
    scripts = ui.get("/sdapi/v1/scripts")
    check("script registered for txt2img and img2img",
          "style components" in scripts["txt2img"] and "style components" in scripts["img2img"])

    _, off = ui.generate()
    off_px = first(off)
    code, on = ui.generate([style])
    check("style changes the image", code == 200 and not np.array_equal(first(on), off_px), on.get("errors", ""))
    on_px, text = first(on), infotexts(on)[0]
    check("infotext has the settings", "Style components:" in text, text.split("Style components:")[-1][:120])
    check("same request twice: same pixels", np.array_equal(first(ui.generate([style])[1]), on_px))
    positional = [True, model, 1.0, 1.0, False, -1, "all", "", 0.0, 1.0, [], "", "", 1.0, -0.5, 2.0]
    code, pos = ui.generate(positional)
    check("positional args == named args", code == 200 and np.array_equal(first(pos), on_px), pos.get("errors", ""))
    code, again = ui.generate(None, infotext=text)
    check("infotext alone regenerates the image", code == 200 and np.array_equal(first(again), on_px))
    code, bad = ui.generate([{**style, "strenght": 1.0}])
    check("misspelt argument is an error", code >= 400 and "strenght" in json.dumps(bad), f"HTTP {code}")
    code, bad = ui.generate([{**style, "strength": "strong"}])
    check("wrong argument type is an error", code >= 400, f"HTTP {code}")
    check("strength 0 == extension off", np.array_equal(first(ui.generate([{**style, "strength": 0.0}])[1]), off_px))
    if mismatched:
        code, mis = ui.generate([{**style, "model": mismatched}])
        check("mismatched adapter: image without style", code == 200 and np.array_equal(first(mis), off_px))
    check("after the errors: off == off", np.array_equal(first(ui.generate()[1]), off_px))

    # batches: every image styled; an image regenerated alone from its infotext (same seed)
    _, boff = ui.generate(batch_size=2, n_iter=2)
    _, bon = ui.generate([style], batch_size=2, n_iter=2)
    check("batch 2 x 2: every image styled", len(bon["images"]) == 4 and all(
        not np.array_equal(pixels(a), pixels(b)) for a, b in zip(bon["images"], boff["images"])))
    _, rnd = ui.generate([{**style, "random": True, "seed": -1}], batch_size=2)
    body = {**BASE, "infotext": infotexts(rnd)[1]}
    body.pop("seed")
    _, alone = ui.post("/sdapi/v1/txt2img", body)
    diff = np.abs(first(alone).astype(int) - pixels(rnd["images"][1]))
    check("per-image random style: image 2 regenerated alone", diff.max() <= 1,
          f"max diff {diff.max()} (A1111 itself differs by up to 1 level between batch and single)")

    hires = dict(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5, hr_upscaler="Latent")
    code, hr = ui.generate([{**style, "end": 0.6}], **hires)
    check("hires fix", code == 200 and not np.array_equal(first(hr), first(ui.generate(**hires)[1])), hr.get("errors", ""))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    i2i = dict(init_images=[off["images"][0]], denoising_strength=0.6)
    inpaint = dict(i2i, mask=base64.b64encode(buf.getvalue()).decode(), inpainting_fill=1)
    for name, fields in (("img2img", i2i), ("inpaint", inpaint)):
        code, img = ui.generate([style], path="/sdapi/v1/img2img", **fields)
        plain = ui.generate(None, path="/sdapi/v1/img2img", **fields)[1]
        check(name, code == 200 and not np.array_equal(first(img), first(plain)), img.get("errors", ""))
    if reference:
        ref = base64.b64encode(open(reference, "rb").read()).decode()
        code, r = ui.generate([{"enabled": True, "model": model, "ref_images": [ref]}])
        check("reference image as base64", code == 200 and "Style components:" in infotexts(r)[0], r.get("errors", ""))
    code, r = ui.generate([{**style, "ref_images": ["/etc/passwd"]}])
    check("a file path in ref_images is refused", code >= 400 and "not file paths" in json.dumps(r), f"HTTP {code}")

    xyz = ui.get("/sdapi/v1/script-info")
    axes = next(s for s in xyz if s["name"] == "x/y/z plot" and not s["is_img2img"])["args"][0]["choices"]
    if "Style strength" in axes:
        args = [axes.index("Style strength"), "0, 1", [], axes.index("Style component 1"), "-2, 2", [], 0, "", [],
                True, True, False, False, False, False, False, 0, False]
        code, grid = ui.generate([style], script_name="x/y/z plot", script_args=args)
        cells = [pixels(b) for b in grid.get("images", [])[1:5]]
        check("XYZ strength x component 1", code == 200 and len(cells) == 4 and np.array_equal(cells[0], cells[2])
              and np.array_equal(cells[0], off_px) and not np.array_equal(cells[1], cells[3]))
    else:
        check("XYZ axes registered", False, "no 'Style strength' axis (API-only mode has none)")

    if lora:
        prompt = f"a cat <lora:{lora}:1>"
        with_lora = first(ui.generate([style], prompt=prompt)[1])
        check("LoRA + style differs from style alone", not np.array_equal(with_lora, on_px))
        check("style alone after a LoRA run is unchanged", np.array_equal(first(ui.generate([style])[1]), on_px))

    if refiner:
        # another SD1 checkpoint as the refiner, two checkpoints kept loaded: the switch makes
        # another model object current, and the style must follow it. Style to the end vs style
        # ending at the switch differ only if the refiner's steps were styled.
        # (A1111 restores an override only for options saved in config.json: put the old value back)
        limit = ui.get("/sdapi/v1/options").get("sd_checkpoints_limit", 1)
        ref = dict(refiner_checkpoint=refiner, refiner_switch_at=0.5, override_settings={"sd_checkpoints_limit": 2})
        try:
            code, whole = ui.generate([style], **ref)
            _, until = ui.generate([{**style, "end": 0.5}], **ref)
        finally:
            ui.post("/sdapi/v1/options", {"sd_checkpoints_limit": limit})
        check("sd_checkpoints_limit restored", ui.get("/sdapi/v1/options").get("sd_checkpoints_limit") == limit)
        check("refiner of the same architecture: its steps keep the style",
              code == 200 and not np.array_equal(first(whole), first(until)), whole.get("errors", ""))

    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(reply=ui.generate([style], steps=30)))
    worker.start()
    time.sleep(4)
    ui.post("/sdapi/v1/interrupt", {})
    worker.join()
    check("after an interrupted styled run: off == off", np.array_equal(first(ui.generate()[1]), off_px))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:7860")
    p.add_argument("--model", required=True, help="an SD1 style model the WebUI lists")
    p.add_argument("--mismatched", help="an SDXL style model (checks the mismatch path)")
    p.add_argument("--lora", help="a LoRA name to combine with the style")
    p.add_argument("--reference", help="an image file for the reference-image check (needs an extractor)")
    p.add_argument("--refiner", help="another SD1 checkpoint, used as the refiner (sd_checkpoints_limit is 2 for that check, then restored)")
    args = p.parse_args(argv)
    results = run(WebUI(args.url), args.model, args.mismatched, args.lora, args.reference, args.refiner)
    failed = [name for name, ok in results.items() if not ok]
    print(f"{len(results) - len(failed)}/{len(results)} passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
