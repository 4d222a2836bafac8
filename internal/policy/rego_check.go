package policy

import (
	"sort"

	"github.com/moatless/moatless/internal/wire"
)

// checkRegoModules is the part of CompileRego that needs no evaluator,
// so that an executable with OPA and one without (moatless-sidecar)
// refuse the same inputs for the same reasons: the counts of modules and
// data documents, then each module in order, its ID unique, then its ID
// and size (checkRegoSource). The first failed check ends it; the
// evaluator then parses every module (and reports every module's syntax
// errors at once). It returns a copy of the modules sorted by ID.
func checkRegoModules(modules []wire.RegoModule, data []wire.DataDocument) ([]wire.RegoModule, error) {
	if err := checkRegoCounts(modules, data); err != nil {
		return nil, err
	}
	seen := make(map[string]struct{}, len(modules))
	out := make([]wire.RegoModule, 0, len(modules))
	for _, m := range modules {
		if _, dup := seen[m.ID]; dup {
			return nil, regoErrorf("module %q given twice", m.ID)
		}
		seen[m.ID] = struct{}{}
		if err := checkRegoSource(m.ID, m.Source); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
