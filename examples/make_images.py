"""Make the synthetic example images (never real patients): python examples/make_images.py"""

from pathlib import Path

from fhir_images import synthetic

HERE = Path(__file__).parent / "images"


def main() -> None:
    HERE.mkdir(exist_ok=True)
    icc = synthetic.srgb_icc()
    files = {
        "ultrasound-still.png": synthetic.png(320, 240),
        "rash-forearm-gps.jpg": synthetic.jpeg(
            640, 480, gps=True, orientation=6, device=True, icc=icc, seed=1
        ),
        "child-nappy-area.jpg": synthetic.jpeg(480, 360, gps=True, device=True, seed=2),
        "wound-clinic.jpg": synthetic.jpeg(640, 480, seed=3),
        "eczema-teen.heic": synthetic.heic(320, 240, gps=True),
        "knee-no-purpose.jpg": synthetic.jpeg(320, 240, seed=4),
        "referral-letter.jpg": synthetic.pdf(),  # a PDF renamed .jpg: must be refused as bad input
        "breathing-sounds.wav": synthetic.wav(2.0),
        "toddler-bruise.jpg": synthetic.jpeg(480, 360, seed=5),
    }
    for name, data in files.items():
        (HERE / name).write_bytes(data)
    synthetic.write_mp4(HERE / "video-consultation.mp4", 200_000, duration_s=95.0)
    print(f"wrote {len(files) + 1} files to {HERE}")


if __name__ == "__main__":
    main()
