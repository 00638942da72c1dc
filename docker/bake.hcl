# docker buildx bake -f docker/bake.hcl            # both images
# docker buildx bake -f docker/bake.hcl sm121      # DGX Spark only (build on an arm64 host or with QEMU)
variable "SGLANG_VERSION" { default = "0.5.23" }
variable "TAG" { default = "0.1.0" }

group "default" { targets = ["sm120", "sm121"] }

target "common" {
  context = "."
  args    = { SGLANG_VERSION = SGLANG_VERSION }
}

target "sm120" {
  inherits   = ["common"]
  dockerfile = "docker/Dockerfile.sm120"
  platforms  = ["linux/amd64"]
  tags       = ["sglang-sm12x:sm120-${TAG}"]
}

target "sm121" {
  inherits   = ["common"]
  dockerfile = "docker/Dockerfile.sm121"
  platforms  = ["linux/arm64"]
  tags       = ["sglang-sm12x:sm121-${TAG}"]
}
