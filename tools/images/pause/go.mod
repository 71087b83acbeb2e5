module diffusion.dev/pause

go 1.25
