// Renders an Ollama Modelfile's TEMPLATE with Go's text/template, the engine Ollama runs it in,
// over the same values Ollama passes (.Messages with .Role and .Content; .System, .Prompt).
//
//	go run tests/ollama_template/main.go Modelfile < messages.json   # prints the prompt
//
// tests/gguf_check.py (make gguf-test) compares its output with shelley's Jinja rendering.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

// The Modelfile writes TEMPLATE as one triple-quoted value, which may span lines.
var templateLine = regexp.MustCompile(`(?s)(?:^|\n)TEMPLATE """(.*?)"""`)

func main() {
	modelfile, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err)
	}
	m := templateLine.FindSubmatch(modelfile)
	if m == nil {
		fail(fmt.Errorf("%s has no TEMPLATE \"\"\"...\"\"\"", os.Args[1]))
	}
	var messages []Message
	if err := json.NewDecoder(os.Stdin).Decode(&messages); err != nil {
		fail(err)
	}
	t, err := template.New("modelfile").Parse(string(m[1]))
	if err != nil {
		fail(err)
	}
	if err := t.Execute(os.Stdout, Values{Messages: messages}); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ollama_template:", err)
	os.Exit(1)
}
