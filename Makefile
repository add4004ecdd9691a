# bakery.images: bake images from this checkout, and test it.
#
#   make bake [BAKE_ARGS="--check -e @my-bake.yml"]   bake with playbooks/bake.yml
#   make test                                          lint, sanity, unit, integration, molecule, docs (CI)
#   make lint | sanity | unit | integration | molecule | docs   one of them
#   make integration-emulated                          every bake under emulation (make test runs the arm64 one)
#   make ee [EE_ARGS=...]                              build the execution environment, bake in it
#   make help                                          this list
#
# Everything needed is installed on the way: Debian packages with apt-get when root (else the missing
# ones are named), a virtualenv in .venv (redone only when requirements*.txt change), this checkout
# built and installed as a collection in .collections (redone only when a file of it changed).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
BAKE_PLAYBOOK ?= playbooks/bake.yml
BAKE_ARGS ?=
PYTEST_ARGS ?=
# Integration tests run in 3 streams (scripts/integration): the VM boots, the cloud tests and the others at once;
# INTEGRATION_STREAMS=1 runs them one after the other.
export INTEGRATION_STREAMS ?= 3
# Extra ansible-test sanity options, e.g. SANITY_ARGS="--test pylint".
SANITY_ARGS ?=

# Debian packages.  bubblewrap isolates the chroot builder (qemu targets with provision: chroot) from the
# host.  mmdebstrap runs in root mode as root; uidmap is for its unshare mode as non-root,
# arch-test lets it check foreign architectures.  cgroupfs-mount: scripts/dockerd mounts the cgroup
# hierarchies with it where nothing else did.
# qemu disks: qemu-utils (qemu-img), fdisk (sfdisk), e2fsprogs (mkfs.ext4 -d), dosfstools and mtools (the ESP),
# grub-common (grub-mkimage), grub-pc-bin and grub-efi-amd64-bin (GRUB for BIOS and UEFI), vagrant (its
# insecure public key for disks with vagrant: true, as the default bake's); qemu-utils also for vagrant_box
# (virtualbox VMDKs, qcow2 with a backing file).
APT_BAKE := docker.io bubblewrap iptables cgroupfs-mount mmdebstrap uidmap arch-test debian-archive-keyring ca-certificates \
	qemu-utils fdisk e2fsprogs dosfstools mtools grub-common grub-pc-bin grub-efi-amd64-bin vagrant
# Builder VMs (qemu_vm): qemu-system-x86 runs them, ovmf is the UEFI firmware, openssh-client logs in (and makes
# their keys), dosfstools and mtools make cloud-init seeds without a mount.
APT_BAKE += qemu-system-x86 ovmf openssh-client
# Foreign architectures (base.architecture: arm64): qemu-user-static runs their binaries through binfmt_misc,
# which scripts/binfmt mounts and registers where nothing did (BINFMT_ARCHES).  busybox-static (statically
# linked) runs natively in their chroot in place of readlink, realpath and mkdir while the rootfs's initramfs is
# made: that build takes 60 s of CPU instead of 160 s (without it, the initramfs is made as before).  It takes the
# place of Debian's dynamically linked busybox where that is installed (it provides busybox: the same program).
APT_BAKE += qemu-user-static busybox-static
BINFMT_ARCHES ?= arm64
# arm64 disks boot (provision: vm, verify) under qemu-system-aarch64 (qemu-system-arm) with UEFI only: AAVMF
# (qemu-efi-aarch64).  Their GRUB (grub-efi-arm64-bin, arm64 only) is in their own tree; grub-common's
# grub-mkimage makes their BOOTAA64.EFI.
APT_BAKE += qemu-system-arm qemu-efi-aarch64
# gnupg: gpg signs the checksums and provenance statements (bake.sign) and checks them (verify_artifacts).
APT_BAKE += gnupg
# zstd: the per-step cache of chroot builders keeps their trees as zstd tarballs.
APT_BAKE += zstd
# docker-registry: a local registry for push tests; apache2-utils: htpasswd for its authentication;
# shellcheck: lints scripts/ and .ci/run.  e2fsprogs: tests make raw disks with mkfs.ext4 -d and read them
# with debugfs.
APT_TEST := $(APT_BAKE) docker-registry apache2-utils shellcheck
# vagrant-libvirt: `vagrant up` of the libvirt boxes; libvirt-daemon-system, libvirt-clients and dnsmasq-base:
# the libvirtd (with its DHCP network) that boots them (vagrant: `vagrant box add` of boxes and catalogs).
APT_TEST += vagrant-libvirt libvirt-daemon-system libvirt-clients dnsmasq-base

SHELL_SCRIPTS := .ci/run $(filter-out %.py,$(wildcard scripts/*))

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.collections
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help bake test lint sanity unit integration integration-emulated molecule docs ee \
	apt-bake apt-test collection collection-test clean distclean

help:
	@sed -n '3,8s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

# ---------------------------------------------------------------- installs

apt-bake:
	@scripts/system-packages $(APT_BAKE)

apt-test:
	@scripts/system-packages $(APT_TEST)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# pip compiles every module it installs (28,000 files for the tests' venv: 62 of its 127 s with the downloads
# cached), and that stays: with PYTHONDONTWRITEBYTECODE set (this workplace sets it), Python would never keep the
# modules it compiles on import, and every run would compile them again
$(VENV)/.stamp-runtime: requirements.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.stamp-test: requirements.txt requirements-test.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@ $(VENV)/.stamp-runtime

collection: $(VENV)/.stamp-runtime
	@scripts/collection $(VENV)

collection-test: $(VENV)/.stamp-test
	@scripts/collection $(VENV)

# ---------------------------------------------------------------- bake

bake: apt-bake collection
	@scripts/binfmt $(BINFMT_ARCHES) || echo "note: bakes for $(BINFMT_ARCHES) cannot run here until that is done" >&2
	@scripts/dockerd start
	@if scripts/dockerd status | grep -q 'started by scripts/dockerd'; then \
		echo "note: the Docker engine started for this bake is left running; 'scripts/dockerd stop' stops it"; \
	fi
	PATH="$(BIN):$$PATH" $(BIN)/ansible-playbook $(BAKE_PLAYBOOK) $(BAKE_ARGS)

# ---------------------------------------------------------------- tests

# All steps run, even after a failure; a summary with timings (and how busy each group kept the CPUs) follows.
# Steps joined by '+' run at the same time (scripts/steps); a ~step at the lowest CPU priority: Molecule and the
# docs build take the CPU time the integration streams leave (their boots and waits), and the integration tests
# run as fast as alone. Lint, sanity and the unit tests run before them, not beside: the integration streams keep
# both CPUs busy from their start (97% over a whole run), and beside them those three made the run 280 s longer.
# dockerd is started (and stopped again) only around the integration tests and the Molecule scenarios, which
# are the ones that need it.
test: apt-test collection-test
	@MAKE="$(MAKE)" scripts/steps lint+sanity+unit integration+~molecule+~docs

# ansible-lint reads .ansible-lint (profile production, offline) and resolves bakery.images from .collections.
lint: collection-test
	@rc=0; \
	echo "+ ruff check ."; $(BIN)/ruff check . || rc=1; \
	echo "+ ruff format --check ."; $(BIN)/ruff format --check . || rc=1; \
	echo "+ antsibull-changelog lint"; $(BIN)/antsibull-changelog lint || rc=1; \
	echo "+ ansible-lint"; PATH="$(BIN):$$PATH" $(BIN)/ansible-lint -q || rc=1; \
	if command -v shellcheck >/dev/null; then \
		echo "+ shellcheck $(SHELL_SCRIPTS)"; shellcheck $(SHELL_SCRIPTS) || rc=1; \
	else \
		echo "shellcheck is not installed (apt-get install shellcheck): shell scripts not linted" >&2; \
	fi; \
	exit $$rc

sanity: $(VENV)/.stamp-test
	scripts/sanity $(VENV) $(SANITY_ARGS)

# pytest's exit status 5 means it collected no test: a failure here, where tests are expected.
unit: collection-test
	@$(BIN)/pytest tests/unit $(PYTEST_ARGS) || { rc=$$?; \
		if [ $$rc = 5 ]; then echo "unit: pytest collected no tests in tests/unit" >&2; fi; exit $$rc; }

# the arm64 bake (tests/integration/test_arm64.py) runs its arm64 binaries through qemu-user: scripts/binfmt registers
# the handler where nothing did (where it cannot, that test fails and says so; the others run)
integration: apt-test collection-test
	@scripts/binfmt $(BINFMT_ARCHES) || echo "note: the arm64 integration test cannot run here until that is done" >&2
	@PATH="$(BIN):$$PATH" scripts/dockerd run scripts/integration $(BIN)/pytest $(PYTEST_ARGS) || { rc=$$?; \
		if [ $$rc = 5 ]; then echo "integration: pytest collected no tests in tests/integration" >&2; fi; \
		exit $$rc; }

# The integration tests that bake a foreign architecture (arm64) under emulation: an emulated root filesystem with
# its kernel, containers and a chroot under qemu-user, a disk booted under qemu-system-aarch64 (TCG). Tens of
# minutes on two cores: make test runs only the arm64 bake of the default role (marker arm64), this all of them.
integration-emulated: apt-test collection-test
	@scripts/binfmt arm64
	@PATH="$(BIN):$$PATH" INTEGRATION_EMULATED=1 scripts/dockerd run scripts/integration $(BIN)/pytest $(PYTEST_ARGS)

# Every Molecule scenario in extensions/molecule (molecule test --all), on the Docker engine.  Their cache
# directory is their own (make test runs them beside the integration tests); only its rootfs directory, the base
# root filesystem tarballs, is the one the integration tests share (tests/integration/conftest.py). Its log begins
# with "CRITICAL 'extensions/molecule/default/molecule.yml' glob failed": Molecule looks for a default scenario to
# share state with, finds none (there is none here), says so that way, and then runs every scenario.
MOLECULE_CACHE := tests/output/cache/molecule
molecule: apt-test collection-test
	@mkdir -p tests/output/cache/rootfs $(MOLECULE_CACHE)
	@[ -L $(MOLECULE_CACHE)/rootfs ] || ln -s ../rootfs $(MOLECULE_CACHE)/rootfs
	@PATH="$(BIN):$$PATH" BAKERY_CACHE_DIR=$(CURDIR)/$(MOLECULE_CACHE) \
		scripts/dockerd run $(BIN)/molecule test --all

# The execution environment of execution-environment.yml, built with ansible-builder, and a bake run in it as
# AWX runs a job (scripts/ee-check.py). Not part of `make test`: the build downloads packages from PyPI and
# Debian into the image (minutes). Offline from registries: EE_ARGS="--base bakery/debian:bookworm" (the base
# image the tests and Molecule make); behind a TLS-inspecting proxy add --ca-bundle FILE.
ee: apt-test collection-test
	@PATH="$(BIN):$$PATH" scripts/dockerd run $(BIN)/python scripts/ee-check.py $(EE_ARGS)

# The docs site (HTML, offline) in .collections/docs/build/html: antsibull-docs writes the pages of every
# module, plugin and role found in this collection, plus docs/docsite (guides), and Sphinx builds them.
docs: collection-test
	@PATH="$(BIN):$$PATH" scripts/docs

# ---------------------------------------------------------------- cleaning

clean:
	rm -rf .collections .ruff_cache .pytest_cache tests/output

distclean: clean
	rm -rf $(VENV)
