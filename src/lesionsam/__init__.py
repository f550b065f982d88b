"""lesionsam: 3D Segment Anything (SAM-Med3D) transferred to lesion segmentation in CT and MRI."""

__version__ = "0.1.0"
