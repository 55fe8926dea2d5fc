package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// image is what a reference stands for on this node: an image's entrypoint and the
// directories its `PATH` searches, all on the local filesystem (no image is pulled).
type image struct {
	// Entrypoint runs when a container gives no `command`.
	Entrypoint []string `json:"entrypoint"`
	// Path is where a `command` without a slash is looked up, in order.
	Path []string `json:"path"`
}

// imageTable maps image references (as written in pod specs) to images.
type imageTable map[string]image

// loadImages reads the table; the tests own it and may rewrite it while the agent runs
// (each container start reads it again).
func loadImages(file string) (imageTable, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the image table: %w", err)
	}
	var table imageTable
	if err := json.Unmarshal(data, &table); err != nil {
		return nil, fmt.Errorf("the image table %s: %w", file, err)
	}
	for ref, img := range table {
		if len(img.Entrypoint) == 0 && len(img.Path) == 0 {
			return nil, fmt.Errorf("the image table %s: %q has neither an entrypoint nor a path", file, ref)
		}
	}
	return table, nil
}

// argv is the command line a container runs, resolved as a runtime resolves it against
// an image: `command` replaces the entrypoint, `args` follow; a command without a slash
// is found in the image's path.
func (img image) argv(command, args []string) ([]string, error) {
	argv := append([]string{}, img.Entrypoint...)
	if len(command) > 0 {
		argv = append([]string{}, command...)
	}
	argv = append(argv, args...)
	if len(argv) == 0 {
		return nil, fmt.Errorf("no command: the image has no entrypoint and the container names none")
	}
	if !strings.Contains(argv[0], "/") {
		found := ""
		for _, dir := range img.Path {
			candidate := filepath.Join(dir, argv[0])
			if info, err := os.Stat(candidate); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
				found = candidate
				break
			}
		}
		if found == "" {
			return nil, fmt.Errorf("%q is not in the image's path %v", argv[0], img.Path)
		}
		argv[0] = found
	}
	return argv, nil
}
