// The Go oracle for tests/goregex.rs: what Go's regexp does with a description regex, called the
// way nix2container calls it (nix/tar.go: re.Match on the source path; nix/utils.go:
// re.ReplaceAll on the source path for a rewrite). Standard library only.
//
//	oracle cases   stdin: one case a line, "REGEX\tINPUT\tREPL", each field hex-encoded
//	               stdout: "E\tMESSAGE" when Go refuses the regex, else "M\t0|1\tHEX(ReplaceAll)"
//	oracle folds   every rune whose simple case folding orbit is not itself: "RUNE ORBIT..." (hex)
package main

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"strings"
	"unicode"
)

func field(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, "oracle: bad hex:", err)
		os.Exit(2)
	}
	return b
}

func cases() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<26)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		f := strings.Split(in.Text(), "\t")
		if len(f) != 3 {
			fmt.Fprintln(os.Stderr, "oracle: want 3 fields, got", len(f))
			os.Exit(2)
		}
		re, err := regexp.Compile(string(field(f[0])))
		if err != nil {
			fmt.Fprintf(out, "E\t%s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		src := field(f[1])
		m := 0
		if re.Match(src) {
			m = 1
		}
		fmt.Fprintf(out, "M\t%d\t%s\n", m, hex.EncodeToString(re.ReplaceAll(src, field(f[2]))))
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "oracle:", err)
		os.Exit(2)
	}
}

func folds() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if unicode.SimpleFold(r) == r {
			continue
		}
		fmt.Fprintf(out, "%x", r)
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			fmt.Fprintf(out, " %x", f)
		}
		fmt.Fprintln(out)
	}
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "cases" {
		cases()
	} else if len(os.Args) == 2 && os.Args[1] == "folds" {
		folds()
	} else {
		fmt.Fprintln(os.Stderr, "usage: oracle cases|folds")
		os.Exit(2)
	}
}
