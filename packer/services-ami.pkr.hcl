# The CircleCI Server 2.x Services AMI with haagent baked in. `make ami` runs
# `packer init` and `packer build` here. Nothing instance-specific is baked: the config comes
# from user-data (or /etc/haagent/haagent.yaml written by cloud-init), everything else from S3.

packer {
  required_plugins {
    amazon = {
      version = ">= 1.2.8"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "instance_type" {
  type    = string
  default = "m5.xlarge"
}

# An Ubuntu LTS by default; any systemd distribution with apt works.
variable "base_ami_name" {
  type    = string
  default = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
}

variable "base_ami_owner" {
  type    = string
  default = "099720109477" # Canonical
}

variable "ssh_username" {
  type    = string
  default = "ubuntu"
}

variable "ami_name_prefix" {
  type    = string
  default = "circleci-services-haagent"
}

variable "haagent_binary" {
  type    = string
  default = "../bin/haagent"
}

# The runbook suggests pre-pulling CircleCI's images to speed up the first boot.
variable "preinstall_docker" {
  type    = bool
  default = false
}

# With preinstall_docker, the exact apt version of docker_package to install and hold
# (apt-mark hold), e.g. the one matching the Docker the Replicated release recommends
# (CircleCI ran 17.12.1 or 18.09.9 with Replicated 2.38.6). Required then: never the newest.
variable "docker_package" {
  type    = string
  default = "docker.io"
}

variable "docker_version" {
  type    = string
  default = ""
}

variable "prepull_images" {
  type    = list(string)
  default = []
}

locals {
  timestamp = formatdate("YYYYMMDDhhmm", timestamp())
}

source "amazon-ebs" "services" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = var.ssh_username
  ami_name      = "${var.ami_name_prefix}-${local.timestamp}"

  source_ami_filter {
    filters = {
      name                = var.base_ami_name
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.base_ami_owner]
    most_recent = true
  }

  # Instances launched from the AMI require IMDSv2; hop limit 2 because CircleCI's containers
  # use the instance role too (a limit of 1 cuts them off).
  imds_support = "v2.0"
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
  }

  tags = {
    Name      = "${var.ami_name_prefix}-${local.timestamp}"
    BakedWith = "haagent"
  }
}

build {
  sources = ["source.amazon-ebs.services"]

  provisioner "file" {
    source      = var.haagent_binary
    destination = "/tmp/haagent"
  }

  provisioner "file" {
    source      = "journald-haagent.conf"
    destination = "/tmp/journald-haagent.conf"
  }

  provisioner "file" {
    source      = "check-image.sh"
    destination = "/tmp/check-image.sh"
  }

  provisioner "shell" {
    script          = "bake.sh"
    execute_command = "sudo -E bash '{{ .Path }}'"
    environment_vars = [
      "PREINSTALL_DOCKER=${var.preinstall_docker}",
      "DOCKER_PACKAGE=${var.docker_package}",
      "DOCKER_VERSION=${var.docker_version}",
      "PREPULL_IMAGES=${join(" ", var.prepull_images)}",
    ]
  }
}
