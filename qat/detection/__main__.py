import sys

from ..cli import main

sys.exit(main(prog="python -m qat.detection", default_model="yolov8n"))
