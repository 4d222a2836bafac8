// Package traffic holds what the data plane and the server's detection
// agree on about a request without knowing each other: the path template
// a traffic record keys on (PathTemplate) and the PII counts a sampled
// response body yields (ScanPII). It is a leaf: sidecars and the gateway
// import it, and so does internal/detect, but it imports neither.
package traffic
