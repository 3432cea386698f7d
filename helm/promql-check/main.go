// promql-check parses PromQL expressions with Prometheus's own parser, as `promtool check
// rules` does: stdin is a JSON object {"alert name": "expression", ...}; each expression
// that does not parse is printed as "name: error" and the exit code is 1.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	var exprs map[string]string
	if err := json.NewDecoder(os.Stdin).Decode(&exprs); err != nil {
		fmt.Fprintln(os.Stderr, "promql-check: stdin is not a JSON object of strings:", err)
		os.Exit(2)
	}
	names := make([]string, 0, len(exprs))
	for name := range exprs {
		names = append(names, name)
	}
	sort.Strings(names)
	p := parser.NewParser(parser.Options{})
	failed := false
	for _, name := range names {
		if _, err := p.ParseExpr(exprs[name]); err != nil {
			fmt.Printf("%s: %v\n", name, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
