// Command luahealth runs an Argo CD resource health check (a Lua script) the way Argo CD does:
// with gopher-lua, the object as the global `obj`, and the returned table's `status` and
// `message`. It reads a JSON array of objects on standard input and prints a JSON array of
// {"name", "status", "message"}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
)

type result struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: luahealth SCRIPT.lua < objects.json")
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("reading the script: %v", err)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	var objects []map[string]interface{}
	if err := json.Unmarshal(input, &objects); err != nil {
		fail("stdin is not a JSON array of objects: %v", err)
	}
	var results []result
	for _, o := range objects {
		l := lua.NewState(lua.Options{SkipOpenLibs: false})
		l.SetGlobal("obj", toLua(l, o))
		if err := l.DoString(string(script)); err != nil {
			fail("running the script: %v", err)
		}
		ret, ok := l.Get(-1).(*lua.LTable)
		if !ok {
			fail("the script did not return a table")
		}
		name, _ := o["metadata"].(map[string]interface{})["name"].(string)
		results = append(results, result{
			Name:    name,
			Status:  lua.LVAsString(ret.RawGetString("status")),
			Message: lua.LVAsString(ret.RawGetString("message")),
		})
		l.Close()
	}
	out, _ := json.Marshal(results)
	fmt.Println(string(out))
}

// toLua converts decoded JSON to Lua values as Argo CD does: objects and arrays become tables
// (arrays 1-indexed), numbers become numbers.
func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		t := l.NewTable()
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]interface{}:
		t := l.NewTable()
		for k, item := range v {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	default:
		return lua.LString(fmt.Sprint(v))
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "luahealth: "+format+"\n", args...)
	os.Exit(1)
}
