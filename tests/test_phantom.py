"""Tests of the B-mode phantom (data_prep.phantom) against the facts and sources in docs/phantom.md."""

import math

import numpy as np
import pytest

from data_prep import phantom as P
from data_prep.phantom.plane_scenes import BUILDERS

# ----------------------------------------------------------------------------- biometry


@pytest.mark.parametrize(
    "ga, expected",
    [
        # INTERGROWTH-21st published table (Papageorghiou 2014): mean ± SD in mm (BPD, HC, AC, FL)
        (20, {"bpd": (48.4, 2.3), "hc": (172.5, 7.4), "ac": (147.7, 7.6), "fl": (31.3, 1.8)}),
        (28, {"bpd": (73.5, 2.9), "hc": (260.4, 8.9), "ac": (233.3, 11.3), "fl": (51.3, 2.1)}),
        (36, {"bpd": (91.2, 3.5), "hc": (319.4, 10.8), "ac": (312.8, 17.0), "fl": (66.4, 2.7)}),
    ],
)
def test_intergrowth_matches_reference_table(ga, expected):
    mean = P.intergrowth_biometry(ga)
    plus_one_sd = P.intergrowth_biometry(ga, z_score=1.0)
    for name, (mu, sd) in expected.items():
        assert mean[name] == pytest.approx(mu, abs=0.1), name
        assert plus_one_sd[name] - mean[name] == pytest.approx(sd, abs=0.1), name


def test_intergrowth_rejects_out_of_range_age():
    with pytest.raises(ValueError, match="outside"):
        P.intergrowth_biometry(8.0)


def test_cardiac_circumference_formula():
    # -53.11 + 6.56*GA - 0.035*GA^2 (PubMed 21876089), by hand at 20 weeks
    assert P.cardiac_circumference_mm(20) == pytest.approx(-53.11 + 131.2 - 14.0)


# ----------------------------------------------------------------------------- geometry


def test_fan_layout_hand_computed():
    probe = P.ProbeGeometry(radius_mm=50.0, fov_deg=60.0, depth_mm=100.0, frequency_mhz=3.5, n_lines=128)
    half_width, z_top, z_bottom = probe.extent_mm
    assert half_width == pytest.approx(150 * 0.5)
    assert z_top == pytest.approx(50 * (math.cos(math.radians(30)) - 1))
    assert z_bottom == pytest.approx(100.0)
    layout = P.FanLayout.fit(probe, (200, 200), margin_px=0)
    # width 150 mm over 200 px beats height 106.7 mm over 200 px
    assert layout.mm_per_px == pytest.approx(0.75)
    mask = layout.fan_mask()
    # the face centre sits R/pitch below the apex, top-aligned fan: corners of the top arc at row 0
    face_row, face_col = layout.mm_to_pixel(0.0, 0.0)
    assert face_row == pytest.approx(50 * (1 - math.cos(math.radians(30))) / 0.75)
    assert mask[int(round(face_row)) + 2, int(round(face_col))]
    assert not mask[int(round(face_row)) - 3, int(round(face_col))]  # above the convex face: outside
    assert not mask[0, 0] and not mask[-1, 0] and not mask[-1, -1]  # sector corners are black
    r0, c0, r1, c1 = layout.fan_bbox()
    assert r0 <= 1 and c0 <= 1 and c1 >= 198
    assert r1 == pytest.approx((100 + 50 * (1 - math.cos(math.radians(30)))) / 0.75, abs=1.5)


def test_probe_rejects_bad_geometry():
    with pytest.raises(ValueError, match=r"fov_deg must be in \(0, 180\), got 185.0"):
        P.ProbeGeometry(50.0, 185.0, 100.0, 3.5, 128)
    with pytest.raises(ValueError, match="invalid probe geometry"):
        P.ProbeGeometry(50.0, 60.0, 100.0, 3.5, 4)  # fewer than 8 scan lines


# ----------------------------------------------------------------------------- physics


def _homogeneous_acquisition(seed=0, tissue=None, extra_layers=()):
    probe = P.ProbeGeometry(radius_mm=50.0, fov_deg=60.0, depth_mm=100.0, frequency_mhz=3.5, n_lines=192)
    layout = P.FanLayout.fit(probe, (400, 400))
    grid = P.PolarGrid.for_layout(layout)
    params = P.ImagingParams(
        target_mean=40,
        target_std=50,
        pulse_cycles=2.5,
        lateral_sigma_lines=1.0,
        tgc_residual_db_per_cm=0.0,
        tgc_wiggle_db=0.0,
        noise_floor_db=-80.0,
        reverb_db=-60.0,
        smoothing_mm=0.0,
        tgc_follow=0.0,
        interface_db=0.0,
        focus_depth=0.5,
        focus_gain_db=0.0,
        edge_loss_db=0.0,
    )
    scene = P.Scene(tissue or P.Tissue(0.0, atten=0.5, texture_db=0.0))
    for shape, t in extra_layers:
        scene.add(shape, t)
    rng = np.random.default_rng(seed)
    tgc = P.tgc_curve(grid, params, rng)
    texture = np.zeros((grid.r.size, grid.theta.size), np.float32)
    acq = P.acquire(scene, grid, params, P.draw_speckle(rng, grid), tgc, texture)
    return grid, params, acq


def test_speckle_first_order_statistics_match_rayleigh():
    """Speckle calibration (docs/phantom.md): fully developed speckle has mean/std 1.91 and a 5.57 dB log std."""
    grid, params, acq = _homogeneous_acquisition()
    log_env = P.envelope_db(acq, params)
    band = log_env[int(0.3 * log_env.shape[0]) : int(0.7 * log_env.shape[0]), 10:-10]
    band = band - band.mean(axis=1, keepdims=True)  # remove the (flat) depth profile
    assert band.std() == pytest.approx(5.57, abs=0.35)
    amplitude = 10 ** (band / 20)
    assert amplitude.mean() / amplitude.std() == pytest.approx(1.91, abs=0.12)


def test_tgc_compensates_nominal_attenuation():
    """With tgc_follow = 0 the TGC removes exactly 2*0.5*f*d, so depth profiles of 0.5 dB/cm/MHz tissue are flat."""
    grid, params, acq = _homogeneous_acquisition()
    log_env = P.envelope_db(acq, params)
    rows = log_env.shape[0]
    shallow = log_env[int(0.15 * rows) : int(0.3 * rows)].mean()
    deep = log_env[int(0.7 * rows) : int(0.85 * rows)].mean()
    assert abs(shallow - deep) < 1.0


def test_bone_casts_shadow_and_fluid_enhances():
    """Per-ray attenuation: shadow behind bone, posterior enhancement behind fluid."""
    bone = (P.Capsule(-20.0, 30.0, -5.0, 30.0, 2.5), P.BONE)
    fluid = (P.Ellipse(15.0, 30.0, 8.0, 12.0), P.FLUID)
    grid, params, acq = _homogeneous_acquisition(extra_layers=[bone, fluid])
    log_env = P.envelope_db(acq, params)
    x, z = grid.cartesian()
    deep = (z > 55) & (z < 85)

    def level(x_lo, x_hi):
        region = deep & (x > x_lo) & (x < x_hi)
        return 20 * np.log10(np.mean(10 ** (log_env[region] / 20)))

    reference = level(-2.0, 2.0)  # between the two structures
    shadow = level(-18.0, -8.0)
    enhanced = level(10.0, 20.0)
    assert reference - shadow > 20.0  # near-total shadow behind the femur-like bone
    assert enhanced - reference > 3.0  # ~24 mm of fluid at 3.5 MHz should give ~8 dB


def test_polar_block_sampling_equals_pointwise_sampling():
    for plane in P.ALL_PLANES:
        rng = np.random.default_rng(7)
        anatomy = BUILDERS[plane](rng)
        layout = P.FanLayout.fit(anatomy.probe, (120, 160))
        grid = P.PolarGrid.for_layout(layout, pad=3)
        fast = anatomy.scene.sample_polar(grid.r, grid.theta, anatomy.probe.radius_mm)
        x, z = grid.cartesian()
        slow = anatomy.scene.sample(x, z, -anatomy.probe.radius_mm, with_label=False)
        # identical up to float rounding of points lying exactly on a layer boundary
        assert (fast.echo_db != slow.echo_db).mean() < 1e-3, plane
        assert (fast.atten != slow.atten).mean() < 1e-3, plane
        assert (fast.echo_db == slow.echo_db).all(axis=0).mean() > 0.9, plane


@pytest.mark.parametrize("plane", ["abdomen", "intrapartum"])
@pytest.mark.parametrize("theta_shift", [0.0, 0.02])
def test_block_label_map_equals_pointwise_labels(plane, theta_shift):
    anatomy = BUILDERS[P.canonical_plane(plane)](np.random.default_rng(8))
    layout = P.FanLayout.fit(anatomy.probe, (120, 160))
    fast = anatomy.scene.label_map(layout, theta_shift)
    rows = np.arange(120, dtype=np.float32)[:, None]
    cols = np.arange(160, dtype=np.float32)[None, :]
    x, z = np.broadcast_arrays(*layout.pixel_mm(rows, cols))
    zr = z + np.float32(anatomy.probe.radius_mm)
    c, s = np.float32(math.cos(theta_shift)), np.float32(math.sin(theta_shift))
    qx, qz = x * c + zr * s, -x * s + zr * c - np.float32(anatomy.probe.radius_mm)
    slow = anatomy.scene.sample(np.ascontiguousarray(qx), np.ascontiguousarray(qz), -anatomy.probe.radius_mm).label
    assert (fast != slow).mean() < 1e-3
    assert len(np.unique(fast)) >= 3


def test_scan_converter_is_bilinear():
    probe = P.ProbeGeometry(50.0, 60.0, 100.0, 3.5, 64)
    layout = P.FanLayout.fit(probe, (100, 120))
    grid = P.PolarGrid.for_layout(layout)
    converter = P.ScanConverter.build(layout, grid)
    # a field linear in (row, line) index is reproduced exactly by bilinear interpolation
    rr, tt = np.meshgrid(np.arange(grid.r.size, dtype=np.float32), np.arange(64, dtype=np.float32), indexing="ij")
    image = converter(2.0 * rr + 3.0 * tt, fill=-1.0)
    r, theta = layout.polar_of_pixels()
    ir = (r - 50.0) / grid.dr_mm
    it = (theta + probe.half_fov) / grid.d_theta - 0.5
    expected = 2.0 * np.clip(ir, 0, grid.r.size - 1) + 3.0 * np.clip(it, 0, 63)
    fan = converter.fan
    np.testing.assert_allclose(image[fan], expected[fan], atol=2e-3)
    assert (image[~fan] == -1.0).all()


def test_auto_optimise_hits_targets():
    rng = np.random.default_rng(0)
    image_db = rng.normal(0.0, 8.0, size=(200, 200)).astype(np.float32)
    fan = np.zeros((200, 200), bool)
    fan[20:180, 20:180] = True
    ref, dr = P.auto_optimise(image_db, fan, target_mean=40.0, target_std=50.0)
    grey = P.log_compress(image_db, fan, dr, ref).astype(np.float64)
    assert grey.mean() == pytest.approx(40.0, abs=0.6)
    assert grey.std() == pytest.approx(50.0, abs=0.6)
    assert (grey[~fan] == 0).all()


# ----------------------------------------------------------------------------- rendering


def _fan_of(plane_image):
    info = plane_image.info
    probe = P.ProbeGeometry(**info["probe"])
    layout = P.FanLayout(probe, plane_image.image.shape, info["mm_per_px"], info["apex_row"], info["apex_col"])
    return layout.fan_mask()


@pytest.mark.parametrize("plane", P.ALL_PLANES)
def test_render_plane_black_outside_fan(plane):
    result = P.render_plane(plane, np.random.default_rng(1), (120, 160))
    assert result.image.dtype == np.uint8 and result.image.shape == (120, 160)
    fan = _fan_of(result)
    assert (result.image[~fan] == 0).all()
    assert (result.image[fan] > 0).mean() > 0.4
    assert (P.label_scheme(plane) is None) == (result.label is None)


def test_render_is_deterministic_and_seed_dependent():
    a = P.render_plane("brain", np.random.default_rng(5), (96, 128)).image
    b = P.render_plane("Fetal brain", np.random.default_rng(5), (96, 128)).image
    c = P.render_plane("brain", np.random.default_rng(6), (96, 128)).image
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.2


def test_abdomen_labels_follow_fass_scheme():
    seen = set()
    for seed in range(3):
        result = P.render_plane("abdomen", np.random.default_rng(seed), (160, 200))
        values = set(np.unique(result.label).tolist())
        assert values <= set(P.FASS_LABELS.values())
        assert (result.label[~_fan_of(result)] == 0).all()
        counts = np.bincount(result.label.ravel(), minlength=5)
        assert counts[2] == counts[1:].max()  # the liver fills most of the section (ISUOG)
        seen |= values
    assert seen == {0, 1, 2, 3, 4}


def test_intrapartum_layout_symphysis_upper_left_of_head():
    for seed in range(3):
        result = P.render_plane("intrapartum", np.random.default_rng(seed), (128, 160))
        assert set(np.unique(result.label).tolist()) == {0, 1, 2}
        sp = np.argwhere(result.label == 1).mean(axis=0)
        head = np.argwhere(result.label == 2).mean(axis=0)
        assert sp[0] < head[0] and sp[1] < head[1]
        assert 90 <= result.info["aop_deg"] <= 160


def test_cine_frames_are_correlated_but_move():
    frames = P.render_sequence("thorax", np.random.default_rng(2), 4, (120, 160), max_rock_lines=4)
    assert len(frames) == 4
    first = frames[0].image.astype(np.float64)
    for frame in frames[1:]:
        other = frame.image.astype(np.float64)
        assert 0.3 < np.corrcoef(first.ravel(), other.ravel())[0, 1] < 0.999
    # the display settings of the first frame are kept for the loop
    assert len({f.info["dynamic_range_db"] for f in frames}) == 1


def test_labels_stay_aligned_with_the_image_while_the_probe_rocks():
    frames = P.render_sequence("abdomen", np.random.default_rng(4), 4, (160, 200), max_rock_lines=10)
    assert len({f.info["rock_lines"] for f in frames}) > 1
    for frame in frames:
        image = frame.image.astype(np.float64)
        stomach, liver = image[frame.label == 3], image[frame.label == 2]
        assert stomach.size > 20 and liver.size > 200
        assert stomach.mean() < 0.5 * liver.mean()  # the fluid-filled stomach is dark where it is labelled


def test_intrapartum_sequence_head_descends():
    frames = P.render_sequence("intrapartum", np.random.default_rng(3), 3, (96, 128))
    aops = [f.info["aop_deg"] for f in frames]
    assert aops[0] < aops[1] < aops[2]
    assert not np.array_equal(frames[0].label, frames[2].label)


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown plane"):
        P.render_plane("kidney", rng)
    with pytest.raises(ValueError, match="n_frames"):
        P.render_sequence("brain", rng, 0)
    with pytest.raises(ValueError, match="shape"):
        P.render_plane("brain", rng, (16, 16))
