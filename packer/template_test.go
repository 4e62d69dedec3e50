// Package packer holds the AMI template; this test checks its structure offline, since
// Debian's packer (1.6.6) cannot validate modern templates and the plugins cannot be fetched.
package packer

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/haagent/haagent/internal/peertest"
)

// amazonEBS is the subset of amazon-ebs attributes and blocks the template may use (from the
// plugin's documentation); a typo would otherwise only fail at `packer build`.
var amazonEBS = map[string]bool{
	"region": true, "instance_type": true, "ssh_username": true, "ami_name": true, "imds_support": true,
	"tags": true, "source_ami_filter": true, "metadata_options": true, "ami_description": true,
	"subnet_id": true, "vpc_id": true, "associate_public_ip_address": true, "encrypt_boot": true, "kms_key_id": true,
}

func parse(t *testing.T) *hclsyntax.Body {
	t.Helper()
	p := hclparse.NewParser()
	f, diags := p.ParseHCLFile("services-ami.pkr.hcl")
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	return f.Body.(*hclsyntax.Body)
}

func TestTemplateStructure(t *testing.T) {
	body := parse(t)
	vars := map[string]bool{}
	locals := map[string]bool{}
	var source, build *hclsyntax.Block
	for _, b := range body.Blocks {
		switch b.Type {
		case "variable":
			vars[b.Labels[0]] = true
		case "locals":
			for name := range b.Body.Attributes {
				locals[name] = true
			}
		case "source":
			if b.Labels[0] != "amazon-ebs" {
				t.Errorf("unexpected source %v", b.Labels)
			}
			source = b
		case "build":
			build = b
		}
	}
	if source == nil || build == nil {
		t.Fatal("the template needs an amazon-ebs source and a build")
	}
	// Every var.X and local.X referenced is declared.
	hclsyntax.VisitAll(body, func(n hclsyntax.Node) hcl.Diagnostics {
		if e, ok := n.(hclsyntax.Expression); ok {
			for _, tr := range e.Variables() {
				root := tr.RootName()
				if len(tr) < 2 {
					continue
				}
				name := tr[1].(hcl.TraverseAttr).Name
				if root == "var" && !vars[name] {
					t.Errorf("var.%s is not declared", name)
				}
				if root == "local" && !locals[name] {
					t.Errorf("local.%s is not declared", name)
				}
			}
		}
		return nil
	})
	for name := range source.Body.Attributes {
		if !amazonEBS[name] {
			t.Errorf("amazon-ebs attribute %q is not one the template is allowed to use", name)
		}
	}
	var meta *hclsyntax.Block
	for _, b := range source.Body.Blocks {
		if !amazonEBS[b.Type] {
			t.Errorf("amazon-ebs block %q is not known", b.Type)
		}
		if b.Type == "metadata_options" {
			meta = b
		}
	}
	if meta == nil {
		t.Fatal("IMDSv2 must be required through metadata_options")
	}
	want := map[string]string{"http_tokens": `"required"`, "http_put_response_hop_limit": "2", "http_endpoint": `"enabled"`}
	src, _ := os.ReadFile("services-ami.pkr.hcl")
	for k, v := range want {
		a, ok := meta.Body.Attributes[k]
		if !ok || strings.TrimSpace(string(a.Expr.Range().SliceBytes(src))) != v {
			t.Errorf("metadata_options.%s must be %s", k, v)
		}
	}
	// Files the build uploads or runs exist.
	for _, b := range build.Body.Blocks {
		for _, attr := range []string{"source", "script"} {
			a, ok := b.Body.Attributes[attr]
			if !ok {
				continue
			}
			if lit, ok := a.Expr.(*hclsyntax.TemplateExpr); ok && lit.IsStringLiteral() {
				v, _ := lit.Value(nil)
				if _, err := os.Stat(v.AsString()); err != nil {
					t.Errorf("provisioner %s %q does not exist", attr, v.AsString())
				}
			}
		}
	}
}

func TestTemplateIsFormatted(t *testing.T) {
	if _, err := exec.LookPath("packer"); err != nil {
		peertest.Missing(t, "packer is not installed (apt-get install packer)")
	}
	out, err := exec.Command("packer", "fmt", "-check", "-diff", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("packer fmt -check: %v\n%s", err, out)
	}
}

// The check the AMI build runs refuses an image with a baked config or secret.
func TestCheckImageRefusesBakedSecrets(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/local/bin", "etc/systemd/system/multi-user.target.wants", "etc/systemd/journald.conf.d", "etc/haagent"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "usr/local/bin/haagent"), []byte("#!/bin/sh\necho haagent test\n"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/systemd/system/haagent.service"), []byte("[Unit]\n"), 0o644)
	os.Symlink("../haagent.service", filepath.Join(root, "etc/systemd/system/multi-user.target.wants/haagent.service"))
	os.WriteFile(filepath.Join(root, "etc/systemd/journald.conf.d/haagent.conf"), []byte("[Journal]\n"), 0o644)
	if out, err := exec.Command("bash", "check-image.sh", root).CombinedOutput(); err != nil {
		t.Fatalf("a clean image was refused: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(root, "etc/haagent/haagent.yaml"), []byte("version: 1\n"), 0o644)
	out, err := exec.Command("bash", "check-image.sh", root).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "/etc/haagent/haagent.yaml is baked into the image") {
		t.Fatalf("a baked config was not refused: %v\n%s", err, out)
	}
}

// Docker baked into the image is a pinned version held with apt-mark hold: bake.sh refuses to
// run without docker_version (before it changes anything), and the template passes it.
func TestBakedDockerIsPinned(t *testing.T) {
	cmd := exec.Command("bash", "bake.sh")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "PREINSTALL_DOCKER=true", "DOCKER_VERSION="}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "preinstall_docker needs docker_version") {
		t.Fatalf("bake.sh without docker_version: %v\n%s", err, out)
	}
	bake, _ := os.ReadFile("bake.sh")
	for _, want := range []string{`pkgs=("${DOCKER_PACKAGE:-docker.io}=${DOCKER_VERSION}")`, `apt-get install -y -qq --allow-downgrades "${pkgs[@]}"`, "  hold_docker\n"} {
		if !strings.Contains(string(bake), want) {
			t.Errorf("bake.sh lacks %s", want)
		}
	}
	tpl, _ := os.ReadFile("services-ami.pkr.hcl")
	if !strings.Contains(string(tpl), `"DOCKER_VERSION=${var.docker_version}"`) {
		t.Error("the template does not pass docker_version to bake.sh")
	}
}

// Every installed package of the Docker engine is held, not only the one named: docker-ce with
// docker-ce-cli and containerd.io, docker.io with containerd and runc. bake.sh's hold step runs
// here with dpkg-query and apt-mark stand-ins that answer from a list and record the hold.
func TestBakedDockerHoldsTheWholeEngine(t *testing.T) {
	for _, tc := range []struct{ installed, held string }{
		{"docker-ce docker-ce-cli containerd.io", "hold docker-ce docker-ce-cli containerd.io"},
		{"docker.io containerd runc", "hold docker.io containerd runc"},
	} {
		bin := t.TempDir()
		rec := filepath.Join(bin, "apt-mark.args")
		os.WriteFile(filepath.Join(bin, "dpkg-query"), []byte("#!/bin/sh\nfor a; do last=$a; done\nfor p in "+tc.installed+"; do [ \"$p\" = \"$last\" ] && { printf 'install ok installed'; exit 0; }; done\nexit 1\n"), 0o755)
		os.WriteFile(filepath.Join(bin, "apt-mark"), []byte("#!/bin/sh\necho \"$*\" > "+rec+"\n"), 0o755)
		cmd := exec.Command("bash", "bake.sh", "hold-docker")
		cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin"}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", tc.installed, err, out)
		}
		if got, _ := os.ReadFile(rec); strings.TrimSpace(string(got)) != tc.held {
			t.Errorf("installed %s: apt-mark %q, want %q", tc.installed, got, tc.held)
		}
	}
}
