# A Docker template for the round trip: imported, baked by bakery, and the image runs.
variable "base_image" {
  type = string
}

variable "repository" {
  type = string
}

locals {
  greeting = upper("hello")
  line     = "${local.greeting} from packer"
}

source "docker" "web" {
  image  = var.base_image
  commit = true
  pull   = false
  changes = [
    "CMD [\"/bin/cat\", \"/srv/greeting\"]",
    "ENV GREETING=${local.greeting}",
    "LABEL org.example.imported=packer",
  ]
}

build {
  name    = "roundtrip"
  sources = ["source.docker.web"]

  provisioner "shell" {
    inline = ["mkdir -p /srv", "echo '${local.line}' > /srv/greeting"]
  }

  provisioner "shell" {
    script           = "scripts/append.sh"
    environment_vars = ["EXTRA=world"]
  }

  provisioner "file" {
    source      = "files/motd"
    destination = "/etc/motd"
  }

  post-processor "docker-tag" {
    repository = var.repository
    tags       = ["latest", "1.0"]
  }
}
