// Package promtool pins the version of Prometheus's promtool that the tests use to check and
// unit-test the alert rules (deploy/components/prometheusrule). The test support builds it from
// this module with `go build github.com/prometheus/prometheus/cmd/promtool`, like the test
// control plane: no prebuilt binary is downloaded.
package promtool
