// Command gitserver serves Git repositories over HTTP with Flux's own test Git server
// (github.com/fluxcd/pkg/gittestserver) and commits to them on request, for the tests that run
// Flux's controllers against the test control plane.
//
// It prints "ADDR <http-url>" once serving, then reads commands from stdin, one per line:
//
//	commit <repo> <dir> <message...>
//
// which makes the branch master of <repo> (for example "gitops/tickets.git") hold exactly the
// files of <dir> (files no longer there are removed), as one new commit, and answers
// "OK <commit-sha>" or "ERR <message>". It stops at end of input.
package main

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fluxcd/pkg/gittestserver"
	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/memfs"
	gogit "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/memory"
)

func main() {
	server, err := gittestserver.NewTempGitServer()
	if err != nil {
		fail("creating the git server: %v", err)
	}
	defer os.RemoveAll(server.Root())
	if err := server.StartHTTP(); err != nil {
		fail("serving HTTP: %v", err)
	}
	defer server.StopHTTP()
	fmt.Printf("ADDR %s\n", server.HTTPAddress())

	clones := map[string]*gogit.Repository{}
	input := bufio.NewScanner(os.Stdin)
	for input.Scan() {
		fields := strings.Fields(input.Text())
		if len(fields) < 4 || fields[0] != "commit" {
			fmt.Println("ERR expected: commit <repo> <dir> <message>")
			continue
		}
		sha, err := commit(server.Root(), clones, fields[1], fields[2], strings.Join(fields[3:], " "))
		if err != nil {
			fmt.Printf("ERR %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Printf("OK %s\n", sha)
	}
}

// commit makes the repository's master branch hold exactly the files of dir, and pushes it.
func commit(root string, clones map[string]*gogit.Repository, name, dir, message string) (string, error) {
	clone, ok := clones[name]
	if !ok {
		bare := filepath.Join(root, filepath.FromSlash(name))
		if _, err := gogit.PlainInit(bare, true); err != nil {
			return "", fmt.Errorf("creating %s: %w", name, err)
		}
		var err error
		clone, err = gogit.Init(memory.NewStorage(), memfs.New())
		if err != nil {
			return "", err
		}
		if _, err := clone.CreateRemote(&config.RemoteConfig{Name: gogit.DefaultRemoteName, URLs: []string{bare}}); err != nil {
			return "", err
		}
		clones[name] = clone
	}
	worktree, err := clone.Worktree()
	if err != nil {
		return "", err
	}
	if err := removeAll(worktree.Filesystem, "/"); err != nil {
		return "", fmt.Errorf("clearing the worktree: %w", err)
	}
	if err := copyInto(worktree.Filesystem, dir); err != nil {
		return "", fmt.Errorf("copying %s: %w", dir, err)
	}
	if err := worktree.AddWithOptions(&gogit.AddOptions{All: true}); err != nil {
		return "", err
	}
	author := &object.Signature{Name: "tests", Email: "tests@workspace-assist.invalid", When: time.Now()}
	hash, err := worktree.Commit(message, &gogit.CommitOptions{Author: author, AllowEmptyCommits: true})
	if err != nil {
		return "", err
	}
	err = clone.Push(&gogit.PushOptions{RefSpecs: []config.RefSpec{"refs/heads/*:refs/heads/*"}})
	if err != nil && err != gogit.NoErrAlreadyUpToDate {
		return "", fmt.Errorf("pushing: %w", err)
	}
	return hash.String(), nil
}

// removeAll removes every file and directory below path.
func removeAll(worktree billy.Filesystem, path string) error {
	entries, err := worktree.ReadDir(path)
	if err != nil {
		return err
	}
	for _, entry := range entries {
		child := worktree.Join(path, entry.Name())
		if entry.IsDir() {
			if err := removeAll(worktree, child); err != nil {
				return err
			}
		}
		if err := worktree.Remove(child); err != nil {
			return err
		}
	}
	return nil
}

// copyInto copies the files below dir into the worktree.
func copyInto(worktree billy.Filesystem, dir string) error {
	return filepath.WalkDir(dir, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		if entry.IsDir() {
			return worktree.MkdirAll(filepath.ToSlash(rel), 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		file, err := worktree.Create(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		defer file.Close()
		_, err = file.Write(data)
		return err
	})
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
