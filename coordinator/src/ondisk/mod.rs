//! On-disk private region (in progress).
