package cli

import (
	"reflect"
)

// Output conventions, the same for every command:
//
//   - -o text (the default) is for people; -o json is for scripts. A
//     command either honours -o json or refuses it (exit 2) saying what
//     it prints instead; none ignores it.
//   - A list prints as one object: {"items": [...]} with "next" added
//     when the list is paged (the --before value of the next, older page).
//     An empty list is "items": [], never null.
//   - Times are RFC 3339 (UTC in JSON, local time in text), durations Go
//     durations ("1h30m0s") in text and in JSON.
//   - Text table columns are the items' JSON field names, upper case with
//     spaces for underscores, so a column can be found in the JSON by name.

// checkOutput validates a -o value: text or json (dataplane.Env.CheckOutput).
func (e *Env) checkOutput(cmd, output string) (int, bool) { return e.dp().CheckOutput(cmd, output) }

// listOutput is the -o json shape of every list.
type listOutput struct {
	Items any `json:"items"`
	// Next is the --before value of the next (older) page; absent on the
	// last page and for lists that do not page.
	Next uint64 `json:"next,omitempty"`
}

// printList prints items (a slice) as {"items": [...], "next": next}.
func (e *Env) printList(items any, next uint64) int {
	if v := reflect.ValueOf(items); v.Kind() == reflect.Slice && v.IsNil() {
		items = reflect.MakeSlice(v.Type(), 0, 0).Interface()
	}
	return e.printJSON(listOutput{Items: items, Next: next})
}
