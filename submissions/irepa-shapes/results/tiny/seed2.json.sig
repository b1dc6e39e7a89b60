{
 "key": "8c406635d5fd3ff6",
 "signature": "5yZkvg9sf/YpJjagLqc7PHkLqS/QUKRS3PKPxIM88cyeNrpAHRmlZndDPbyR4LodzDV+ZD7RSfHrYggmFI/WBw=="
}
