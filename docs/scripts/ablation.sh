#!/usr/bin/env bash
# Decoded-quality ablation on one LLFF scene with the standard commands (ns-train, ns-eval), one run at a time.
#
#   docs/scripts/ablation.sh DATA OUT TAEF2 [VARIANT ...]
#   e.g. docs/scripts/ablation.sh data/fern outputs/ablation weights/taef2
#
# Phases A and B of each model are trained once with phase C off ("<model>B"); the phase-C variants continue from
# that checkpoint (--load-dir), so they differ in phase C alone. Variants that change phase B train their own run.
# Every run is evaluated with ns-eval (decoded and RGB-NeRF outputs on the held-out views) and decoded_gap.py
# (where its decoded output loses); the table of all results, with each run's split, is written to OUT/ablation.md.
# Short preset, seed 42, as relsnerf-bench. Without VARIANT arguments every variant below runs, in this order (about
# two hours on one H200); name some to run only those (the B runs they continue from run first when missing).
set -u
DATA=$1 OUT=$2 TAEF2=$3
shift 3
RUNS=$OUT/runs
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$RUNS"
TINY_WEIGHTS="--pipeline.model.autoencoder.encoder-weights $TAEF2/taef2_encoder.pth --pipeline.model.autoencoder.decoder-weights $TAEF2/taef2_decoder.pth"
COMMON="--machine.seed 42 --vis tensorboard --steps-per-eval-batch 1000000 --steps-per-eval-image 1000000
  --steps-per-eval-all-images 1000000 --steps-per-save 1000000 --logging.local-writer.enable False
  --pipeline.phases.preset short"
SCENE="llff-data --data $DATA --downscale-factor 4"

log() { echo "=== $(date +%T) $*" | tee -a "$OUT/progress.log"; }
config_of() { ls "$RUNS"/"$1"/*/run/config.yml 2>/dev/null | head -n 1; }

train() {  # name method args...
    local name=$1 method=$2
    shift 2
    [ -n "$(config_of "$name")" ] && [ -e "$OUT/eval_$name.json" ] && return
    log "train $name"
    # shellcheck disable=SC2086
    ns-train "$method" --output-dir "$RUNS" --experiment-name "$name" --timestamp run $COMMON "$@" $SCENE \
        > "$OUT/train_$name.log" 2>&1
    log "trained $name (exit $?)"
    log "evaluate $name"
    ns-eval --load-config "$(config_of "$name")" --output-path "$OUT/eval_$name.json" \
        --render-output-path "$OUT/images_$name" > "$OUT/eval_$name.log" 2>&1
    log "evaluated $name (exit $?)"
    # Where its decoded output loses: training vs held-out views, the autoencoder's ceiling, the latent error.
    python3 "$SCRIPTS/decoded_gap.py" --load-config "$(config_of "$name")" > "$OUT/gap_$name.txt" 2> "$OUT/gap_$name.log"
    log "split $name's gap (exit $?)"
}
from_b() { echo "--load-dir $RUNS/$1/$2/run/nerfstudio_models"; }

tinyB() { train tinyB relsnerf-tiny $TINY_WEIGHTS --pipeline.phases.distill-steps 0; }
r32B() { train r32B relsnerf-r32 --pipeline.phases.distill-steps 0; }
# shellcheck disable=SC2046  # the --load-dir words are meant to split
tiny_c_short() { tinyB; train tiny_c_short relsnerf-tiny $TINY_WEIGHTS $(from_b tinyB relsnerf-tiny); }
tiny_c_paper() {
    tinyB
    train tiny_c_paper relsnerf-tiny $TINY_WEIGHTS --pipeline.phases.distill-steps 3000 \
        --pipeline.num-distill-renders 512 $(from_b tinyB relsnerf-tiny)
}
r32_c_short() { r32B; train r32_c_short relsnerf-r32 $(from_b r32B relsnerf-r32); }
r32_c_large_crops() {
    r32B
    train r32_c_large_crops relsnerf-r32 --pipeline.datamanager.distill-crop-size 1024 $(from_b r32B relsnerf-r32)
}
r32_c_paper() {
    r32B
    train r32_c_paper relsnerf-r32 --pipeline.phases.distill-steps 10000 --pipeline.num-distill-renders 512 \
        $(from_b r32B relsnerf-r32)
}
tiny_four_patches() { train tiny_four_patches relsnerf-tiny $TINY_WEIGHTS --pipeline.datamanager.latent-patches-per-step 4; }
tiny_lz_tenth() { train tiny_lz_tenth relsnerf-tiny $TINY_WEIGHTS --pipeline.model.latent-loss-mult 0.1; }
tiny_paper_recipe() { train tiny_paper_recipe relsnerf-tiny $TINY_WEIGHTS --pipeline.model.recipe paper; }
# The paper's NeRF rate, 0.1^(t / 10000) over its 20,000 phase-B steps (a hundredfold); the default falls tenfold
# over phase B, whatever its length. `--pipeline.model.recipe paper` also sets it (with the paper's losses, so
# tiny_paper_recipe trains with it); these explicit flags change the rate alone, as in the recorded runs.
PAPER_NERF_RATE="--optimizers.proposal-networks.scheduler.phase-b.tenfold-decay-every 10000
  --optimizers.fields.scheduler.phase-b.tenfold-decay-every 10000
  --optimizers.latent-field.scheduler.phase-b.tenfold-decay-every 10000"
# shellcheck disable=SC2086
tinyB_paper_nerf_rate() {
    train tinyB_paper_nerf_rate relsnerf-tiny $TINY_WEIGHTS $PAPER_NERF_RATE --pipeline.phases.distill-steps 0
}
PHASE_TARGETS="--pipeline.model.latent-target-phases 4"
# shellcheck disable=SC2086
tinyB_phase_targets() { train tinyB_phase_targets relsnerf-tiny $TINY_WEIGHTS $PHASE_TARGETS --pipeline.phases.distill-steps 0; }
tiny_phase_targets_c_short() {
    tinyB_phase_targets
    train tiny_phase_targets_c_short relsnerf-tiny $TINY_WEIGHTS $PHASE_TARGETS $(from_b tinyB_phase_targets relsnerf-tiny)
}
tinyB_view_free_latents() {
    train tinyB_view_free_latents relsnerf-tiny $TINY_WEIGHTS --pipeline.model.latent-view-dependent False \
        --pipeline.phases.distill-steps 0
}
tiny_c_decoder_rate() {  # phase C's decoder rate 3e-4, not halved (the default: 1e-4 halved three times)
    tinyB
    train tiny_c_decoder_rate relsnerf-tiny $TINY_WEIGHTS --optimizers.ae-decoder.scheduler.phase-c.lr 3e-4 \
        --optimizers.ae-decoder.scheduler.phase-c.halve-every 0 $(from_b tinyB relsnerf-tiny)
}
# Phase-C crops at any pixel, their latent rays rendered each step (the default crops on the 8-pixel grid).
ANYWHERE="--pipeline.distill-crop-alignment any"
# shellcheck disable=SC2086
tiny_c_anywhere() { tinyB; train tiny_c_anywhere relsnerf-tiny $TINY_WEIGHTS $ANYWHERE $(from_b tinyB relsnerf-tiny); }
# shellcheck disable=SC2086
tiny_c_anywhere_long() {  # 2,000 phase-C steps with the short preset's 64 renders
    tinyB
    train tiny_c_anywhere_long relsnerf-tiny $TINY_WEIGHTS $ANYWHERE --pipeline.phases.distill-steps 2000 \
        $(from_b tinyB relsnerf-tiny)
}

# A relsnerf-tiny run with phase C off and FLAGS, and a continuation of such a run (named B_RUN, trained first when
# missing) with the short phase C on crops at any pixel, the same FLAGS kept.
tiny_b() {  # name flags...
    local name=$1
    shift
    train "$name" relsnerf-tiny $TINY_WEIGHTS "$@" --pipeline.phases.distill-steps 0
}
# shellcheck disable=SC2046
tiny_c_anywhere_after() {  # name b_run flags...
    local name=$1 b_run=$2
    shift 2
    "$b_run"
    train "$name" relsnerf-tiny $TINY_WEIGHTS "$@" $ANYWHERE $(from_b "$b_run" relsnerf-tiny)
}

# Phase B with the decoder frozen at its pretrained weights (the default trains it at 1e-4 beside the NeRF): the
# pretrained decoder keeps its own ceiling D(E(I)), and the latent field alone adapts to it.
FROZEN_DECODER="--optimizers.ae-decoder.scheduler.phase-b.lr 0"
# shellcheck disable=SC2086
tinyB_frozen_decoder() { tiny_b tinyB_frozen_decoder $FROZEN_DECODER; }
# shellcheck disable=SC2086
tiny_frozen_decoder_c_anywhere() {
    tiny_c_anywhere_after tiny_frozen_decoder_c_anywhere tinyB_frozen_decoder $FROZEN_DECODER
}

# A latent branch with twice the hidden width and features per hash-grid level (default 64 and 2).
WIDE_LATENTS="--pipeline.model.latent-hidden-dim 128 --pipeline.model.latent-features-per-level 4"
# shellcheck disable=SC2086
tinyB_wide_latents() { tiny_b tinyB_wide_latents $WIDE_LATENTS; }
# shellcheck disable=SC2086
tiny_wide_latents_c_anywhere() { tiny_c_anywhere_after tiny_wide_latents_c_anywhere tinyB_wide_latents $WIDE_LATENTS; }

# Phase B also trains the encoder: its latents of each step's patch crop pulled towards the field's (weight 0.1, in
# latent spreads), its reconstruction of the crop kept (weight 1); L_z's targets re-encoded every 250 steps.
ENCODER_RATE="--optimizers.ae-encoder.scheduler.phase-b.lr 1e-4"
ADAPT_ENCODER="--pipeline.model.encoder-adaptation-mult 0.1 $ENCODER_RATE"
# shellcheck disable=SC2086
tinyB_encoder_adaptation() { tiny_b tinyB_encoder_adaptation $ADAPT_ENCODER; }
# shellcheck disable=SC2086
tiny_encoder_adaptation_c_anywhere() {
    tiny_c_anywhere_after tiny_encoder_adaptation_c_anywhere tinyB_encoder_adaptation $ADAPT_ENCODER
}
# The same with the pull ten times stronger (weight 1, as L_z's).
# shellcheck disable=SC2086
tinyB_encoder_adaptation_strong() {
    tiny_b tinyB_encoder_adaptation_strong --pipeline.model.encoder-adaptation-mult 1 $ENCODER_RATE
}

# L_z's targets centred on each colour ray's pixel (the images encoded at 8 x 8 one-pixel shifts; the default since
# 2026-12-03, so tinyB trains with them too), and E(I) interpolated between block centres (the default before).
CENTRED="--pipeline.model.latent-target-offsets 8"
tinyB_interpolated_targets() { tiny_b tinyB_interpolated_targets --pipeline.model.latent-target-offsets 1; }
# shellcheck disable=SC2086
tinyB_centred_targets() { tiny_b tinyB_centred_targets $CENTRED; }
# shellcheck disable=SC2086
tiny_centred_targets_c_anywhere() {
    tiny_c_anywhere_after tiny_centred_targets_c_anywhere tinyB_centred_targets $CENTRED
}
# shellcheck disable=SC2046,SC2086
tiny_centred_targets_c_paper() {  # the paper's phase C (3,000 steps, 512 renders) after tinyB_centred_targets
    tinyB_centred_targets
    train tiny_centred_targets_c_paper relsnerf-tiny $TINY_WEIGHTS $CENTRED --pipeline.phases.distill-steps 3000 \
        --pipeline.num-distill-renders 512 $(from_b tinyB_centred_targets relsnerf-tiny)
}

# The default phase B with the fields' sample evaluations compiled (a speed option: quality should not move).
tinyB_compiled() { tiny_b tinyB_compiled --pipeline.model.compile-training True; }

# The paper's phase-B length (20,000 steps, the NeRF rate then exactly the relsnerf recipe's: tenfold over 20,000),
# everything else as tinyB; the held-out views evaluated every 4,000 steps on the way (the train log's tables), the
# fields compiled to fit it in about 20 minutes on one H200.
tinyB_paper_b() {
    tiny_b tinyB_paper_b --pipeline.phases.joint-steps 20000 --steps-per-eval-all-images 4000 \
        --pipeline.model.compile-training True
}

# Decoder guidance: the decoder also sees the colour NeRF's colour, log depth and accumulation of the latent rays
# through a zero-initialised adapter (--pipeline.model.decoder-guidance rgb-depth), against the plain decoder.
GUIDED="--pipeline.model.decoder-guidance rgb-depth"
UNGUIDED="--pipeline.model.decoder-guidance none"
# shellcheck disable=SC2086
tinyB_guided() { tiny_b tinyB_guided $GUIDED; }
# shellcheck disable=SC2086
tinyB_unguided() { tiny_b tinyB_unguided $UNGUIDED; }
# shellcheck disable=SC2046,SC2086
tiny_guided_c_short() {  # the short phase C (grid-aligned crops, the default) after tinyB_guided
    tinyB_guided
    train tiny_guided_c_short relsnerf-tiny $TINY_WEIGHTS $GUIDED $(from_b tinyB_guided relsnerf-tiny)
}
# shellcheck disable=SC2046,SC2086
tiny_unguided_c_short() {
    tinyB_unguided
    train tiny_unguided_c_short relsnerf-tiny $TINY_WEIGHTS $UNGUIDED $(from_b tinyB_unguided relsnerf-tiny)
}
# shellcheck disable=SC2086
r32_guided() { train r32_guided relsnerf-r32 $GUIDED; }
# shellcheck disable=SC2086
r32_unguided() { train r32_unguided relsnerf-r32 $UNGUIDED; }

# Surface guidance: the same maps plus the colour NeRF on 4x4 sub-block rays of each block, composited from the
# latent ray's samples of highest weight (--pipeline.model.decoder-guidance rgb-depth-surface).
SURFACE="--pipeline.model.decoder-guidance rgb-depth-surface"
# shellcheck disable=SC2086
tinyB_surface() { tiny_b tinyB_surface $SURFACE; }
# shellcheck disable=SC2086
tinyB_surface_16() { tiny_b tinyB_surface_16 $SURFACE --pipeline.model.surface-samples 16; }
# The sub-block rays at 1/4 resolution (2x2 per block): a quarter of the field evaluations.
# shellcheck disable=SC2086
tinyB_surface_2x2() { tiny_b tinyB_surface_2x2 $SURFACE --pipeline.model.surface-rays-per-side 2; }
# shellcheck disable=SC2046,SC2086
tiny_surface_c_short() {
    tinyB_surface
    train tiny_surface_c_short relsnerf-tiny $TINY_WEIGHTS $SURFACE $(from_b tinyB_surface relsnerf-tiny)
}
# shellcheck disable=SC2086
r32_surface() { train r32_surface relsnerf-r32 $SURFACE; }

# The guidance modules at the decoder's rate (1e-4 in phase B), as before they had a group of their own (1e-3).
GUIDANCE_AT_DECODER_RATE="--optimizers.decoder-guidance.scheduler.phase-b.lr 1e-4"
# shellcheck disable=SC2086
tinyB_guided_decoder_rate() { tiny_b tinyB_guided_decoder_rate $GUIDED $GUIDANCE_AT_DECODER_RATE; }
# shellcheck disable=SC2086
tinyB_surface_decoder_rate() { tiny_b tinyB_surface_decoder_rate $SURFACE $GUIDANCE_AT_DECODER_RATE; }

# Phase B replayed from CUDA graphs (a speed option: quality should not move), against tinyB_guided (the same
# recipe, eager).
# shellcheck disable=SC2086
tinyB_captured() { tiny_b tinyB_captured $GUIDED --captured-joint-step True; }

VARIANTS=("$@")
[ ${#VARIANTS[@]} -eq 0 ] && VARIANTS=(tiny_c_short tinyB_paper_nerf_rate tinyB_phase_targets tiny_phase_targets_c_short
    tinyB_view_free_latents tiny_c_decoder_rate tiny_c_anywhere tiny_c_anywhere_long tinyB_frozen_decoder
    tiny_frozen_decoder_c_anywhere tinyB_wide_latents tiny_wide_latents_c_anywhere
    tinyB_encoder_adaptation tiny_encoder_adaptation_c_anywhere tinyB_encoder_adaptation_strong tiny_c_paper r32_c_short
    r32_c_large_crops tiny_four_patches tiny_lz_tenth r32_c_paper tiny_paper_recipe tinyB_centred_targets
    tiny_centred_targets_c_anywhere tiny_centred_targets_c_paper tinyB_compiled tinyB_interpolated_targets tinyB_paper_b
    tinyB_guided tiny_guided_c_short tinyB_unguided tiny_unguided_c_short r32_guided r32_unguided tinyB_surface
    tiny_surface_c_short r32_surface tinyB_guided_decoder_rate tinyB_surface_decoder_rate
    tinyB_surface_16 tinyB_surface_2x2 tinyB_captured)
for variant in "${VARIANTS[@]}"; do "$variant"; done

python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = ["| run | decoded PSNR | SSIM | FLIP | RGB-NeRF PSNR | SSIM | FLIP | decoded ms/frame |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
for path in sorted(out.glob("eval_*.json")):
    r = json.loads(path.read_text())["results"]
    rows.append(
        f"| {path.stem[5:]} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r.get('flip', float('nan')):.3f} | "
        f"{r['psnr_rgb_nerf']:.2f} | {r['ssim_rgb_nerf']:.3f} | {r.get('flip_rgb_nerf', float('nan')):.3f} | "
        f"{r['ms_per_frame']:.1f} |"
    )
for path in sorted(out.glob("gap_*.txt")):
    rows += ["", f"{path.stem[4:]}:", *("    " + line for line in path.read_text().splitlines()[-2:])]
(out / "ablation.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
