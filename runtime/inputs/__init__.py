"""What comes in: image files, frame sources (folders, videos, cameras), datasets with ground
truth, EXIF."""
