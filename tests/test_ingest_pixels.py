"""Decoder matrix, photometric handling, region crop, spacing, Doppler flag, near-duplicates.

Fixtures are encoded with pydicom's own encoders (RLE, J2K via pylibjpeg-openjpeg),
Pillow (JPEG baseline, encapsulated by pydicom) or, where no encoder exists
offline (JPEG extended 12-bit, JPEG lossless, JPEG-LS, big endian), taken from the
pydicom wheel's local test files.  Decoded pixels are compared with the source
array (lossless), with a second independent decoder (GDCM through SimpleITK, or
the other pydicom plugin) within the tolerances of docs/deidentification.md §3.3, or with
hand-computed values.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut, convert_color_space, iter_pixels
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from data_prep.ingest.config import BannerPolicy, ConfigError, IngestConfig
from data_prep.ingest.frames import NearDuplicateFilter, colour_fraction, is_doppler, to_output_mode
from data_prep.ingest.regions import clean_regions
from ultradino_monai.data.dicom import (
    CropBox,
    FrameDecoder,
    PixelError,
    PixelSpec,
    Region,
    apply_crop,
    decide_crop,
    parse_regions,
    to_uint8,
)

warnings.filterwarnings("ignore", module="pydicom")
CONFIG = IngestConfig()


def local(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} must be in the pydicom wheel"
    return path


def decode(source, indices=None) -> list[np.ndarray]:
    """Decode through the ingest path: header -> PixelSpec -> pinned plugin -> uint8."""
    stream = open(source, "rb") if isinstance(source, str) else io.BytesIO(source)
    with stream:
        header = dcmread(stream, stop_before_pixels=True)
        spec = PixelSpec.from_header(header)
        decoder = FrameDecoder(stream, header, spec, CONFIG.plugin_for(spec.transfer_syntax))
        wanted = range(spec.frames) if indices is None else indices
        return [frame for _, frame in decoder.frames(wanted)]


def raw_decode(source, plugin: str = "") -> np.ndarray:
    """pydicom's own first frame (no ingest processing), for 16-bit comparisons."""
    return next(iter_pixels(source, decoding_plugin=plugin))


def gdcm(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def smooth_rgb(rows: int = 48, columns: int = 64, frames: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:columns]
    out = np.stack([np.stack([xx * 3 + f, yy * 4, (xx + yy) * 2 + 5 * f], -1) for f in range(frames)])
    return np.clip(out, 0, 255).astype(np.uint8)


def noisy(rows: int = 48, columns: int = 64, frames: int = 1, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (frames, rows, columns) + ((channels,) if channels == 3 else ())
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def dataset_bytes(
    array: np.ndarray, photometric: str, transfer_syntax=ExplicitVRLittleEndian, multiframe=False, **extra
) -> bytes:
    """A US dataset around ``array`` (frames first), saved to bytes."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = UltrasoundMultiFrameImageStorage if multiframe else UltrasoundImageStorage
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.10.999.77.1"
    data = array if multiframe else array[0]
    dataset.set_pixel_data(data, photometric, 8, generate_instance_uid=False)
    for key, value in extra.items():
        setattr(dataset, key, value)
    if transfer_syntax in (RLELossless, JPEG2000Lossless, JPEG2000):
        dataset.compress(
            transfer_syntax,
            encoding_plugin="pylibjpeg" if "2000" in transfer_syntax.name else "pydicom",
            **extra.pop("_kw", {}),
        )
    elif transfer_syntax != ExplicitVRLittleEndian:
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def jpeg_dataset_bytes(frames: np.ndarray, grey: bool) -> bytes:
    """JPEG baseline fixture: Pillow encodes (4:2:2 chroma for colour), pydicom encapsulates."""
    fragments = []
    for frame in frames:
        buffer = io.BytesIO()
        image = Image.fromarray(frame[..., 0] if grey else frame, mode="L" if grey else "RGB")
        image.save(buffer, format="JPEG", quality=95, subsampling="4:2:2")
        fragments.append(buffer.getvalue())
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.SOPClassUID = UltrasoundMultiFrameImageStorage if len(frames) > 1 else UltrasoundImageStorage
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.10.999.77.2"
    dataset.Rows, dataset.Columns = frames.shape[1:3]
    dataset.SamplesPerPixel = 1 if grey else 3
    dataset.PhotometricInterpretation = "MONOCHROME2" if grey else "YBR_FULL_422"
    if not grey:
        dataset.PlanarConfiguration = 0
    if len(frames) > 1:
        dataset.NumberOfFrames = len(frames)
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = encapsulate(fragments)
    dataset["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- decoder matrix ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless]
)
@pytest.mark.parametrize("photometric", ["RGB", "MONOCHROME2"])
def test_lossless_syntaxes_roundtrip_exactly(transfer_syntax, photometric):
    frames = noisy(frames=3, channels=3 if photometric == "RGB" else 1)
    data = dataset_bytes(frames, photometric, transfer_syntax, multiframe=True)
    assert dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == transfer_syntax
    decoded = decode(data)
    assert len(decoded) == 3
    for got, want in zip(decoded, frames):
        np.testing.assert_array_equal(got, want)


def test_planar_configuration_1_native():
    frame = noisy(rows=20, columns=30)[0]
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID, dataset.SOPInstanceUID = UltrasoundImageStorage, "1.2.3.4"
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = 20, 30, 3
    dataset.PhotometricInterpretation, dataset.PlanarConfiguration = "RGB", 1
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = np.ascontiguousarray(frame.transpose(2, 0, 1)).tobytes()  # RRR..GGG..BBB
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    np.testing.assert_array_equal(decode(buffer.getvalue())[0], frame)


def test_big_endian_planar_rgb_matches_gdcm():
    path = local("ExplVR_BigEnd.dcm")
    header = dcmread(path, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID.name == "Explicit VR Big Endian" and header.PlanarConfiguration == 1
    np.testing.assert_array_equal(decode(path)[0], gdcm(path).reshape(60, 80, 3))


def test_big_endian_16_bit_equals_little_endian():
    little, big = decode(local("MR_small.dcm"))[0], decode(local("MR_small_bigendian.dcm"))[0]
    np.testing.assert_array_equal(little, big)
    # Hand check of the 16-bit reduction: signed, BitsStored 16 -> (v + 2**15) >> 8.
    raw = raw_decode(local("MR_small.dcm")).astype(np.int64)
    np.testing.assert_array_equal(little, ((raw + 32768) >> 8).astype(np.uint8))


@pytest.mark.parametrize("grey", [False, True])
def test_jpeg_baseline_within_tolerance_and_plugins_agree(grey):
    frames = smooth_rgb(frames=2)
    if grey:
        frames = np.repeat(frames[..., :1], 3, axis=3)
    data = jpeg_dataset_bytes(frames, grey)
    decoded = decode(data)  # pinned plugin: pillow
    for got, want in zip(decoded, frames):
        want = want[..., 0] if grey else want
        difference = np.abs(got.astype(int) - want.astype(int))
        assert difference.mean() < 2.0 and difference.max() <= 12
    other = np.stack(list(iter_pixels(io.BytesIO(data), decoding_plugin="pylibjpeg")))
    # docs/deidentification.md §3.3: Pillow and pylibjpeg differ by at most 3 levels on JPEG.
    assert np.abs(np.stack(decoded).astype(int) - other.astype(int)).max() <= 3


def test_jpeg_baseline_ybr_example_plugins_agree():
    path = local("examples_ybr_color.dcm")
    assert dcmread(path, stop_before_pixels=True).PhotometricInterpretation == "YBR_FULL_422"
    pinned = decode(path, indices=[0, 29])
    other = list(iter_pixels(path, indices=[0, 29], decoding_plugin="pylibjpeg"))
    for a, b in zip(pinned, other):
        assert a.shape == (240, 320, 3)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 3
    # Grey B-mode stays grey after YCbCr -> RGB (raw YCbCr would be [v, 128, 128]).
    assert np.abs(pinned[0][120, 160].astype(int) - pinned[0][120, 160, 0]).max() <= 3


def test_jpeg_extended_12_bit_matches_gdcm():
    path = local("JPGExtended.dcm")
    header = dcmread(path, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID.name.startswith("JPEG Extended") and header.BitsStored == 12
    raw = raw_decode(path, "pylibjpeg")
    assert np.abs(raw.astype(int) - gdcm(path).reshape(raw.shape).astype(int)).max() <= 1
    frame = decode(path)[0]
    np.testing.assert_array_equal(frame, np.clip(raw.astype(np.int64) >> 4, 0, 255).astype(np.uint8))


def test_jpeg_lossless_matches_gdcm():
    path = local("SC_rgb_jpeg_gdcm.dcm")
    assert dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(decode(path)[0], gdcm(path).reshape(100, 100, 3))


def test_jpeg_ls_lossless_equals_uncompressed_original():
    np.testing.assert_array_equal(
        raw_decode(local("MR_small_jpeg_ls_lossless.dcm"), "pylibjpeg"), raw_decode(local("MR_small.dcm"))
    )
    np.testing.assert_array_equal(decode(local("MR_small_jpeg_ls_lossless.dcm"))[0], decode(local("MR_small.dcm"))[0])


@pytest.mark.parametrize("name", ["JPEGLSNearLossless_08.dcm", "SC_rgb_jls_lossy_line.dcm"])
def test_jpeg_ls_near_lossless_matches_gdcm(name):
    path = local(name)
    frame = decode(path)[0]
    reference = gdcm(path).reshape(frame.shape)
    assert np.abs(frame.astype(int) - reference.astype(int)).max() <= 1


def test_j2k_ybr_rct_lossless_and_ybr_ict_lossy():
    frames = smooth_rgb(frames=1)
    lossless = dataset_bytes(frames, "RGB", ExplicitVRLittleEndian)
    dataset = dcmread(io.BytesIO(lossless))
    dataset.PhotometricInterpretation = "YBR_RCT"  # encoder applies the reversible colour transform
    dataset.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    assert dataset.PhotometricInterpretation == "YBR_RCT"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    np.testing.assert_array_equal(decode(buffer.getvalue())[0], frames[0])

    dataset = dcmread(io.BytesIO(lossless))
    dataset.PhotometricInterpretation = "YBR_ICT"
    dataset.compress(JPEG2000, encoding_plugin="pylibjpeg", j2k_psnr=[60], generate_instance_uid=False)
    assert dataset.PhotometricInterpretation == "YBR_ICT"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    got = decode(buffer.getvalue())[0]
    assert np.abs(got.astype(int) - frames[0].astype(int)).max() <= 3


def test_j2k_example_ybr_rct_plugins_identical():
    path = local("examples_jpeg2k.dcm")
    pinned = decode(path)[0]
    other = raw_decode(path, "pillow")
    np.testing.assert_array_equal(pinned, other)


def test_native_ybr_full_converted_to_rgb():
    frames = smooth_rgb(frames=1)
    ybr = convert_color_space(frames[0], "RGB", "YBR_FULL")
    data = dataset_bytes(ybr[None], "YBR_FULL")
    got = decode(data)[0]
    assert np.abs(got.astype(int) - frames[0].astype(int)).max() <= 2


def test_native_ybr_full_422_matches_gdcm():
    path = local("SC_ybr_full_422_uncompressed.dcm")
    frame = decode(path)[0]
    assert np.abs(frame.astype(int) - gdcm(path).reshape(frame.shape).astype(int)).max() <= 1


def test_monochrome1_is_inverted():
    frames = noisy(channels=1)
    data = dataset_bytes(frames, "MONOCHROME1")
    np.testing.assert_array_equal(decode(data)[0], 255 - frames[0])


def _palette_dataset(entry_bits: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    indices = noisy(rows=16, columns=24, channels=1)
    levels = np.arange(256)
    if entry_bits == 8:
        lut = np.stack([levels, 255 - levels, (levels * 7) % 256], 1).astype(np.uint8)
        expected = lut
    else:
        lut = np.stack([levels * 257, 65535 - levels * 256, (levels * 1000) % 65536], 1).astype(np.uint16)
        expected = (lut >> 8).astype(np.uint8)
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID, dataset.SOPInstanceUID = UltrasoundImageStorage, "1.2.3.5"
    dataset.set_pixel_data(indices[0], "PALETTE COLOR", 8, generate_instance_uid=False)
    for colour, column in (("Red", 0), ("Green", 1), ("Blue", 2)):
        setattr(dataset, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, entry_bits])
        setattr(
            dataset,
            f"{colour}PaletteColorLookupTableData",
            lut[:, column].astype("<u2" if entry_bits == 16 else "u1").tobytes(),
        )
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), indices[0], expected


@pytest.mark.parametrize("entry_bits", [8, 16])
def test_palette_color_8_and_16_bit_luts(entry_bits):
    data, indices, table = _palette_dataset(entry_bits)
    np.testing.assert_array_equal(decode(data)[0], table[indices])


def test_palette_example_uses_16_bit_lut_shifted():
    path = local("examples_palette.dcm")
    dataset = dcmread(path)
    expected = (apply_color_lut(dataset.pixel_array, dataset) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(decode(path)[0], expected)


def test_multiframe_is_decoded_lazily_one_frame_at_a_time():
    frames = noisy(frames=5, channels=1)
    data = bytearray(dataset_bytes(frames, "MONOCHROME2", RLELossless, multiframe=True))
    # Corrupt the tail (the last RLE frame): frames before it must still decode,
    # which only works when frames are decoded one by one, on demand.
    data[-40:] = b"\xff" * 40
    for got, index in zip(decode(bytes(data), indices=[0, 2]), [0, 2]):
        np.testing.assert_array_equal(got, frames[index])
    # pydicom's ValueError on the cut RLE frame becomes a reason code, the cause kept for debugging.
    with pytest.raises(PixelError) as error:
        decode(bytes(data), indices=[4])
    assert error.value.reason == "decode_error"
    assert isinstance(error.value.__cause__, ValueError) and "encapsulated pixel data" in str(error.value.__cause__)


def test_pixel_budget_rejects_before_decoding():
    header = Dataset()
    header.file_meta = FileMetaDataset()
    header.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    header.Rows = header.Columns = 60000
    header.SamplesPerPixel, header.PhotometricInterpretation = 3, "YBR_FULL_422"
    header.BitsAllocated, header.BitsStored, header.PixelRepresentation = 8, 8, 0
    spec = PixelSpec.from_header(header)  # no PixelData at all: nothing is decoded
    with pytest.raises(PixelError) as error:
        spec.check_budget(CONFIG.max_pixels, CONFIG.max_frames)
    assert error.value.reason == "pixel_budget"
    header.Rows = header.Columns = 100
    header.NumberOfFrames = 10**7
    with pytest.raises(PixelError) as error:
        PixelSpec.from_header(header).check_budget(CONFIG.max_pixels, CONFIG.max_frames)
    assert error.value.reason == "frame_budget"


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"PhotometricInterpretation": "YBR_PARTIAL_420"}, "unsupported_photometric"),
        ({"BitsAllocated": 32}, "unsupported_bit_depth"),
        ({"Rows": 0}, "bad_geometry"),
    ],
)
def test_unsupported_pixel_headers_have_reason_codes(change, reason):
    header = dcmread(io.BytesIO(dataset_bytes(noisy(), "RGB")), stop_before_pixels=True)
    for key, value in change.items():
        setattr(header, key, value)
    with pytest.raises(PixelError) as error:
        PixelSpec.from_header(header)
    assert error.value.reason == reason


# -- regions and spacing -------------------------------------------------------------------------
def _region(x0, y0, x1, y1, data_type=1, fmt=1, dx=0.02623, dy=0.02623, units=(3, 3)) -> Region:
    return Region(0, fmt, data_type, CropBox(x0, y0, x1, y1), units[0], units[1], dx, dy)


def test_crop_bounds_are_inclusive_and_spacing_is_ten_delta():
    decision = decide_crop([_region(32, 10, 335, 209)], rows=480, columns=640)
    assert decision.method == "region" and (decision.box.width, decision.box.height) == (304, 200)
    # docs/deidentification.md §3.2, CX50 OB: 0.02623 cm per pixel -> 0.2623 mm.
    assert decision.spacing_mm == pytest.approx((0.2623, 0.2623))
    frame = np.arange(480 * 640, dtype=np.uint32).reshape(480, 640).astype(np.uint8)
    cropped = apply_crop(frame, decision)
    np.testing.assert_array_equal(cropped, frame[10:210, 32:336])


def test_one_pixel_overshoot_is_clamped_but_more_is_stale():
    # OBXXXX1A-style off-by-one: MaxX1 == Columns.
    clamped = decide_crop([_region(0, 60, 800, 518)], rows=600, columns=800)
    assert clamped.method == "region" and clamped.box.x1 == 799
    stale = decide_crop([_region(0, 60, 801, 518)], rows=600, columns=800)
    assert stale.method is None and stale.reason == "region_out_of_bounds"


@pytest.mark.parametrize("name", ["examples_palette.dcm", "examples_ybr_color.dcm"])
def test_stale_regions_of_pydicom_examples_are_quarantined(name):
    header = dcmread(local(name), stop_before_pixels=True)
    decision = decide_crop(parse_regions(header), header.Rows, header.Columns)
    assert decision.method is None and decision.reason == "region_out_of_bounds"
    masked = decide_crop(parse_regions(header), header.Rows, header.Columns, mask_top_rows=20)
    assert (
        masked.method == "mask-top"
        and masked.spacing_mm is None
        and masked.box == CropBox(0, 0, header.Columns - 1, header.Rows - 1)
    )


def test_region_choice_units_and_fallbacks():
    big, small = _region(0, 0, 199, 149), _region(10, 10, 59, 59, data_type=2)
    assert decide_crop([small, big], 300, 300).box == big.box
    assert decide_crop([_region(0, 0, 20, 20)], 300, 300).reason == "region_too_small"
    assert decide_crop([_region(0, 0, 199, 149, fmt=3)], 300, 300).reason == "no_tissue_region"
    assert decide_crop([], 300, 300).reason == "no_tissue_region"
    assert decide_crop([_region(0, 0, 199, 149, units=(0, 0))], 300, 300).spacing_mm is None
    assert decide_crop([_region(0, 0, 199, 149, dx=0.02, dy=0.03)], 300, 300).spacing_mm is None
    assert decide_crop([], 30, 300, mask_top_rows=40).reason == "mask_exceeds_image"
    assert BannerPolicy.parse("mask-top-40") == BannerPolicy(kind="mask-top", rows=40)
    assert BannerPolicy.parse("quarantine").rows == 0  # ingestion passes rows as decide_crop's mask_top_rows
    with pytest.raises(ConfigError, match=r"--banner-policy must be 'quarantine' or 'mask-top-N'.*'mask-top-x'"):
        BannerPolicy.parse("mask-top-x")


def test_mask_top_blacks_out_banner_rows_in_rgb():
    frame = np.full((50, 40, 3), 200, np.uint8)
    decision = decide_crop([], 50, 40, mask_top_rows=12)
    out = apply_crop(frame, decision)
    assert (out[:12] == 0).all() and (out[12:] == 200).all() and out.shape == frame.shape


def test_clean_regions_shift_with_crop_and_drop_outside():
    dataset = Dataset()
    items = []
    for corners, data_type in (((100, 50, 499, 349), 1), ((200, 100, 299, 199), 2), ((0, 400, 639, 470), 10)):
        item = Dataset()
        item.RegionSpatialFormat, item.RegionDataType = 1, data_type
        item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1, item.RegionLocationMaxY1 = corners
        item.ReferencePixelX0, item.ReferencePixelY0 = -7, 3
        item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
        item.PhysicalDeltaX = item.PhysicalDeltaY = 0.05
        item.PatientName = "SHOULD^NOTCOPY"  # not a region attribute: never copied
        items.append(item)
    dataset.SequenceOfUltrasoundRegions = Sequence(items)
    decision = decide_crop(parse_regions(dataset), 480, 640)
    cleaned = clean_regions(dataset, decision)
    assert len(cleaned) == 2  # the ECG strip below the crop is dropped
    first, second = cleaned
    assert (
        first.RegionLocationMinX0,
        first.RegionLocationMinY0,
        first.RegionLocationMaxX1,
        first.RegionLocationMaxY1,
    ) == (0, 0, 399, 299)
    assert (second.RegionLocationMinX0, second.RegionLocationMinY0) == (100, 50)
    assert (second.ReferencePixelX0, second.ReferencePixelY0) == (-7, 3)  # relative to the region
    assert "PatientName" not in first


# -- Doppler flag, grey collapse, near-duplicates ------------------------------------------------
def test_doppler_flag_on_real_and_synthetic_frames():
    colour = next(iter_pixels(local("examples_rgb_color.dcm")))
    assert is_doppler(colour, CONFIG.doppler_fraction, CONFIG.doppler_chroma)  # power Doppler
    grey_jpeg = decode(local("examples_ybr_color.dcm"), indices=[0])[0]
    assert not is_doppler(grey_jpeg, CONFIG.doppler_fraction, CONFIG.doppler_chroma)  # chroma bleed only
    grey = np.repeat(noisy(channels=1)[0][..., None], 3, axis=2)
    assert colour_fraction(grey, 25) == 0.0
    painted = grey.copy()
    painted[10:20, 10:30] = (220, 40, 30)  # 200 of 3072 pixels = 6.5 %
    assert colour_fraction(painted, 25) == pytest.approx(200 / 3072)
    assert is_doppler(painted, 0.05, 25) and not is_doppler(painted, 0.07, 25)


def test_grey_rgb_collapses_to_one_channel():
    grey = noisy(channels=1)[0]
    rgb = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_array_equal(to_output_mode(rgb, doppler=False), grey)
    colourful = smooth_rgb()[0]
    assert to_output_mode(colourful, doppler=True).shape == colourful.shape
    luma = to_output_mode(colourful, doppler=False)
    r, g, b = (colourful[..., i].astype(int) for i in range(3))
    # Pillow's L conversion is ITU-R BT.601: L = (299 R + 587 G + 114 B) / 1000.
    assert np.abs(luma.astype(int) - (299 * r + 587 * g + 114 * b) / 1000).max() <= 1


def test_near_duplicate_filter():
    frames = noisy(frames=3, channels=1)
    keep = NearDuplicateFilter(threshold=1.0)
    assert not keep.is_duplicate(frames[0])
    assert keep.is_duplicate(frames[0].copy())
    almost = frames[0].astype(int)
    almost[::7, ::7] += 1
    assert keep.is_duplicate(np.clip(almost, 0, 255).astype(np.uint8))
    assert not keep.is_duplicate(frames[1])
    assert not NearDuplicateFilter(threshold=-1).is_duplicate(frames[0])


def test_to_uint8_hand_computed_bit_depths():
    spec = PixelSpec(2, 2, 1, 1, "MONOCHROME2", 16, 12, 0, ExplicitVRLittleEndian)
    values = np.array([[0, 15], [16, 4095]], dtype=np.uint16)
    np.testing.assert_array_equal(to_uint8(values, spec, None), [[0, 0], [1, 255]])
    signed = PixelSpec(2, 2, 1, 1, "MONOCHROME1", 16, 16, 1, ExplicitVRLittleEndian)
    values = np.array([[-32768, -1], [0, 32767]], dtype=np.int16)
    # (v + 32768) >> 8, then MONOCHROME1 inversion.
    np.testing.assert_array_equal(to_uint8(values, signed, None), [[255, 128], [127, 0]])
