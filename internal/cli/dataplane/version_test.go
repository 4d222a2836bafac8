package dataplane

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestReadBuildInfo(t *testing.T) {
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: modulePath, Version: "v0.0.0-20261206154800-e506f75abcde+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "GOOS", Value: "linux"}, {Key: "GOARCH", Value: "arm64"},
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "e506f75abcdef0123456789abcdef0123456789a"},
			{Key: "vcs.time", Value: "2026-12-06T15:48:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	host := buildInfo{Version: "dev", Module: modulePath, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	cases := []struct {
		name     string
		bi       *debug.BuildInfo
		ok       bool
		override string
		want     buildInfo
	}{
		{"stamped_build", stamped, true, "dev", buildInfo{Version: "v0.0.0-20261206154800-e506f75abcde+dirty", Module: modulePath,
			Revision: "e506f75abcdef0123456789abcdef0123456789a", RevisionTime: "2026-12-06T15:48:00Z", Modified: true, Go: "go1.26.8", OS: "linux", Arch: "arm64"}},
		{"ldflags_override_wins", stamped, true, "v1.2.3", buildInfo{Version: "v1.2.3", Module: modulePath,
			Revision: "e506f75abcdef0123456789abcdef0123456789a", RevisionTime: "2026-12-06T15:48:00Z", Modified: true, Go: "go1.26.8", OS: "linux", Arch: "arm64"}},
		{"go_run_devel", &debug.BuildInfo{GoVersion: runtime.Version(), Main: debug.Module{Path: modulePath, Version: "(devel)"}}, true, "dev", host},
		{"no_build_info", nil, false, "", host},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := readBuildInfo(func() (*debug.BuildInfo, bool) { return tc.bi, tc.ok }, tc.override)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("readBuildInfo (-want +got):\n%s", diff)
			}
		})
	}
}
