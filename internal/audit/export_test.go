package audit

// SegmentLine is a segment file's record line, for the black-box tests.
type SegmentLine = segmentLine
