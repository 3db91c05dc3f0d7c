// Style Components: tooltips for every control and copy-vector-to-clipboard.
// A1111 loads every file in an extension's javascript/ folder into the page.
(function () {
    const tips = {
        "enabled": "Turn the style on for this generation.",
        "model": "Style model: an adapter and its style space (models/StyleComponents). Use the refresh button after adding files.",
        "refresh": "Rescan the model folders.",
        "multiplier": "Scales every component value: 0 = the mean style, 2 = twice as far from it.",
        "strength": "Scales the style's effect on the image (0 = no style).",
        "random": "Use a random style drawn from the seed instead of the sliders.",
        "seed": "Seed of the random style; -1 takes each image's own seed, so every image of a batch gets its own reproducible style.",
        "random_btn": "Draw a new random style seed.",
        "zero": "Set every component to 0 (the mean style) and turn the random style off.",
        "vector": "The component values as text: paste to import, or export the current sliders.",
        "import": "Set the sliders from the text.",
        "export": "Write the current sliders (or the random style) as text.",
        "copy": "Copy the text vector to the clipboard.",
        "preset": "Set the sliders from a named preset (build presets in the Style Components tab).",
        "preset_refresh": "Rescan the presets folder.",
        "ref_images": "Reference images. While images are here, they decide the style of each generation (the sliders are not read); Extract moves their style onto the sliders and empties this box.",
        "ref_weights": "One weight per reference image (blank: equal weights).",
        "refs": "A note on the references, written to the image's infotext.",
        "extract": "Set the sliders to the reference images' style and empty the box, so that the sliders take over.",
        "blocks": "Which UNet blocks receive the style: all, style only (InstantStyle), texture, composition, or custom weights.",
        "block_weights": "Custom per-layer weights, one per cross-attention layer (16 for SD1, 70 for SDXL).",
        "start": "Fraction of the sampling steps after which the style starts (applied to each pass, hires fix included).",
        "end": "Fraction of the sampling steps after which the style stops.",
    };

    function addTips() {
        for (const tab of ["txt2img", "img2img"]) {
            for (const [key, text] of Object.entries(tips)) {
                let el = gradioApp().getElementById(`style_components_${tab}_${key}`);
                // the accordion's header, not its container: children would inherit the tooltip
                if (el && key === "enabled") el = el.querySelector(".label-wrap");
                if (el && !el.title) el.title = text;
            }
            for (let i = 1; ; i++) {  // sliders c1..cN, as many as the script made
                const el = gradioApp().getElementById(`style_components_${tab}_c${i}`);
                if (!el) break;
                if (!el.title) el.title = `Style component ${i}: 1 = one standard deviation of the training styles.`;
            }
        }
    }

    window.styleComponentsCopy = function (text) {
        if (navigator.clipboard && text) navigator.clipboard.writeText(text);
        return [text];
    };

    if (typeof onUiLoaded === "function") onUiLoaded(addTips);
    if (typeof onUiUpdate === "function") onUiUpdate(addTips);
})();
